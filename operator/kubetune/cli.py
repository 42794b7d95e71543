"""The `kubetune` command. Each subcommand is a module in kubetune.commands with
HELP, add_arguments(parser) and run(args) -> exit code; heavy imports stay inside run()."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

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

# The pip extra (pyproject.toml) each command needs beyond the base install; README's CLI table says the same.
COMMAND_EXTRAS: dict[str, str] = {
    "plan": "operator",  # reads the cluster with the kubernetes client
    "render": "operator",
    "operator": "operator",
    "train": "trainer",  # torch, transformers, peft, TRL
    "demo": "trainer",
}


def install_hint(extra: str) -> str:
    """The exact pip command that installs an extra into this interpreter (editable from a checkout)."""
    checkout = Path(__file__).resolve().parents[2]
    target = f"-e '{checkout}[{extra}]'" if (checkout / "pyproject.toml").is_file() else f"'kubetune[{extra}]'"
    return f"{sys.executable} -m pip install {target}"


def missing_module_message(command: str, error: ModuleNotFoundError) -> str:
    """One line for a module the command needs but this install lacks, with the pip command that fixes it."""
    module = (error.name or str(error)).partition(".")[0]  # the distribution-level name: "accelerate", not ".utils"
    extra = COMMAND_EXTRAS.get(command)
    if extra is None:
        return f"the Python module {module!r} is missing; reinstall kubetune: {install_hint('operator,trainer')}"
    return f"needs the {extra!r} extra (the Python module {module!r} is missing); install it: {install_hint(extra)}"


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


# What a shell reports for a process that a closed pipe ended (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; every failure is one line on stderr and an exit code, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        sys.stdout.flush()
    except CliError as exc:
        print(f"kubetune {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        print(f"kubetune {args.command}: error: {missing_module_message(args.command, exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (`| head`) is gone: send what is left to /dev/null so the flush at exit stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # the last line of defence: a message, not a traceback
        print(f"kubetune {args.command}: internal error ({type(exc).__name__}: {str(exc)[:300]}); "
              "this is a bug in kubetune, please report it with the input that caused it", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
