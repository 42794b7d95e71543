"""`kubetune train -f job.yaml [--output DIR] [--mount /data=DIR]`: run a FineTuneJob's training here."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kubetune import contract
from kubetune.manifest_files import CliError, load_job

HELP = "Fine-tune locally with a FineTuneJob's spec (the same trainer the Job runs), on a GPU if present."
DEFAULT_OUTPUT_ROOT = Path("kubetune-output")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", required=True, metavar="FILE", help="FineTuneJob manifest")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="checkpoints and results (default: ./kubetune-output/<name>); a rerun resumes, "
                        "a finished run trains nothing")
    parser.add_argument("--mount", action="append", default=[], metavar="MOUNT_PATH=DIR",
                        help="read paths under a spec.volumes mountPath from a local directory; repeatable")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on this port while training (0: any free port)")


def parse_mounts(values: list[str]) -> dict[str, Path]:
    mounts = {}
    for value in values:
        mount_path, separator, directory = value.partition("=")
        if not separator or not mount_path.startswith("/") or not directory:
            raise CliError(f"--mount {value!r}: write it as MOUNT_PATH=DIR, e.g. /data=./data")
        mounts[mount_path] = Path(directory)
    return mounts


def run(args: argparse.Namespace) -> int:
    job = load_job(args.filename)
    mounts = parse_mounts(args.mount)
    from kubetune.presets import effective_spec
    from kubetune_trainer.context import RunContext, with_local_mounts
    from kubetune_trainer.train import execute

    context = RunContext(
        spec=with_local_mounts(effective_spec(job.spec), mounts),
        output_dir=args.output or DEFAULT_OUTPUT_ROOT / job.metadata.name,
        metrics_port=args.metrics_port,
        hf_token=os.environ.get(contract.ENV_HF_TOKEN) or None,
        interactive=True,
        termination_log=None,
        local_mounts=mounts,
    )
    return execute(context)
