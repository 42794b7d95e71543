"""Tables in the docs that restate the code: each is read back and compared with the code it describes."""

from __future__ import annotations

import re
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


@pytest.mark.parametrize(
    ("argv", "blocked", "extra"),
    [
        (["plan", "-f", "manifests/examples/cpu-tiny-smollm2.yaml"], "kubernetes", "operator"),
        (["render", "-f", "manifests/examples/cpu-tiny-smollm2.yaml"], "kubernetes", "operator"),
        (["operator", "--standalone"], "kopf", "operator"),
        (["train", "-f", "manifests/examples/cpu-tiny-smollm2.yaml"], "accelerate", "trainer"),
    ],
    ids=["plan without the operator extra names it", "render without the operator extra names it",
         "operator without the operator extra names it", "train without the trainer extra names it"],
)
def test_a_command_missing_its_extra_says_which_pip_install_adds_it(
    argv: list[str], blocked: str, extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.setitem(sys.modules, blocked, None)  # `import blocked` now raises ModuleNotFoundError
    for module in ("kubetune.handlers", "kubetune_trainer.train"):  # imported afresh, so they meet the block
        monkeypatch.delitem(sys.modules, module, raising=False)

    code = main(argv)

    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"needs the '{extra}' extra (the Python module '{blocked}' is missing)" in err
    assert f"-m pip install -e '{REPO}[{extra}]'" in err
