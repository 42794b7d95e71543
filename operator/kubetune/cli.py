"""The `kubetune` command. Each subcommand is a module in kubetune.commands with
HELP, add_arguments(parser) and run(args) -> exit code; heavy imports stay inside run()."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kubetune import __version__
from kubetune.manifest_files import CliError

# name -> module; the order is the order `kubetune --help` lists them in.
COMMANDS: dict[str, str] = {
    "validate": "kubetune.commands.validate",
    "crd": "kubetune.commands.crd",
    "estimate": "kubetune.commands.estimate",
    "plan": "kubetune.commands.plan",
    "render": "kubetune.commands.render",
    "operator": "kubetune.commands.operator",
    "train": "kubetune.commands.train",
    "demo": "kubetune.commands.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune",
        description="Fine-tune LLMs on Kubernetes: validate, estimate, plan and render FineTuneJobs, "
        "train locally, or run the operator.",
    )
    parser.add_argument("--version", action="version", version=f"kubetune {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subcommands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CliError as exc:
        print(f"kubetune {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
