"""Tables in the docs that restate the code: each is read back and compared with the code it describes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune import contract
from kubetune.api import Reason
from kubetune.cli import COMMAND_EXTRAS, COMMANDS

REPO = Path(__file__).resolve().parents[2]
TABLE_ROW = re.compile(r"^\|(.+)\|\s*$")


def table_after(text: str, header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the Markdown table whose header row starts with `header`."""
    lines = text[text.index(header):].splitlines()
    rows = []
    for line in lines[2:]:  # past the header and the --- row
        match = TABLE_ROW.match(line)
        if match is None:
            break
        rows.append([cell.strip() for cell in match.group(1).split("|")])
    return rows


def test_the_trainer_exit_code_table_is_the_contract() -> None:
    rows = table_after((REPO / "docs" / "trainer.md").read_text(encoding="utf-8"), "| exit code | reason")

    documented = {int(code): reason for code, reason, _ in rows}
    expected = {int(code): str(contract.EXIT_CODE_REASONS.get(code, Reason.UNKNOWN))
                for code in contract.ExitCode if code is not contract.ExitCode.OK}
    assert documented == expected


def test_readmes_cli_table_names_every_command_and_the_extra_it_needs() -> None:
    rows = table_after((REPO / "README.md").read_text(encoding="utf-8"), "| command | what it does | extra |")

    documented = {re.match(r"`kubetune (\w+)", command).group(1): extra  # type: ignore[union-attr]
                  for command, _, extra in rows}
    assert documented == {name: COMMAND_EXTRAS.get(name, "-") for name in COMMANDS}


# Runs `kubetune` in a fresh interpreter where importing one module fails, as it does in an install without it.
WITHOUT_MODULE = ("import sys; sys.modules[sys.argv[1]] = None; "
                  "from kubetune.cli import main; sys.exit(main(sys.argv[2:]))")
SUBPROCESS_TIMEOUT_SECONDS = 600  # a fresh interpreter importing the CLI: a second when quiet; only catches a hang


@pytest.mark.parametrize(
    ("argv", "blocked", "extra"),
    [
        (["plan", "-f", "manifests/examples/cpu-tiny-smollm2.yaml"], "kubernetes", "operator"),
        (["render", "-f", "manifests/examples/cpu-tiny-smollm2.yaml"], "kubernetes", "operator"),
        (["operator", "--standalone"], "kopf", "operator"),
        (["train", "-f", "manifests/examples/cpu-tiny-smollm2.yaml"], "torch", "trainer"),
        (["demo", "--dir", "{tmp}"], "transformers", "trainer"),
    ],
    ids=["plan without the operator extra names it", "render without the operator extra names it",
         "operator without the operator extra names it", "train without the trainer extra names it",
         "demo without the trainer extra names it"],
)
def test_a_command_missing_its_extra_says_which_pip_install_adds_it(
    argv: list[str], blocked: str, extra: str, tmp_path: Path
) -> None:
    command = [sys.executable, "-c", WITHOUT_MODULE, blocked, *(arg.format(tmp=tmp_path) for arg in argv)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False,
                              timeout=SUBPROCESS_TIMEOUT_SECONDS)

    assert finished.returncode == 1
    assert finished.stderr.count("\n") == 1 and "Traceback" not in finished.stderr, finished.stderr
    assert f"needs the '{extra}' extra (the Python module '{blocked}' is missing)" in finished.stderr
    assert f"-m pip install -e '{REPO}[{extra}]'" in finished.stderr
