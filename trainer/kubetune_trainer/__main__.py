"""`python -m kubetune_trainer`: the entry point of the trainer container."""

from __future__ import annotations

import logging
import os
import sys

from kubetune_trainer.context import context_from_env, termination_log_path
from kubetune_trainer.errors import TrainerError, write_termination_message
from kubetune_trainer.launch import launch_command, needs_launcher, run_under_torchrun


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        context = context_from_env(os.environ)
    except TrainerError as exc:
        logging.error("%s: %s", exc.reason, exc.message)
        write_termination_message(termination_log_path(os.environ), exc.reason, exc.message)
        return int(exc.exit_code)
    if needs_launcher(context.spec, os.environ):
        return run_under_torchrun(launch_command(context.spec, os.environ), termination_log_path(os.environ))
    from kubetune_trainer.train import execute

    return execute(context)


if __name__ == "__main__":
    sys.exit(main())
