"""`kubetune validate -f FILE [-f FILE...] [--show-effective]`."""

from __future__ import annotations

import argparse
import sys

import yaml

from kubetune.manifest_files import check_documents, load_documents
from kubetune.presets import effective_spec

HELP = "Check FineTuneJob manifests; one line per problem (FILE: spec.path: message), exit 1 if any."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", action="extend", nargs="+", required=True, metavar="FILE",
                        help="manifest files (multi-document YAML allowed; - for stdin); repeatable")
    parser.add_argument("--show-effective", action="store_true",
                        help="print each valid spec with presets and defaults applied")


def run(args: argparse.Namespace) -> int:
    jobs, lines = check_documents(load_documents(args.filename))
    for line in lines:
        print(line, file=sys.stderr)
    for document, job in jobs:
        if args.show_effective:
            effective = job.model_copy(update={"spec": effective_spec(job.spec)})
            print(f"# {document.label}: {job.metadata.name} (effective spec)")
            print(yaml.safe_dump(effective.model_dump(by_alias=True, exclude_none=True, mode="json"),
                                 sort_keys=False), end="---\n")
        elif not lines:
            print(f"{document.label}: {job.metadata.name}: valid")
    return 1 if lines else 0
