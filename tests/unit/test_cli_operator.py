"""`kubetune operator` without usable credentials: one line naming the problem, exit 1, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.cli import main


@pytest.mark.parametrize(
    ("kubeconfig", "message"),
    [
        (None, "no Kubernetes credentials: no in-cluster service account and no kubeconfig at ~/.kube/config; "
               "set KUBECONFIG"),
        ("missing", "cannot use the kubeconfig {path}: FileNotFoundError"),
        ("garbage: [", "cannot use the kubeconfig {path}: ParserError"),
        ("apiVersion: v1\nkind: Config\n", "cannot use the kubeconfig {path}: LoginError: Current context is not set"),
    ],
    ids=["no kubeconfig at all", "KUBECONFIG names a missing file", "a kubeconfig that is not YAML",
         "a kubeconfig without a current context"],
)
def test_the_operator_without_credentials_says_so_in_one_line(
    kubeconfig: str | None, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.delenv("KUBECONFIG", raising=False)
    path = tmp_path / "kubeconfig"
    if kubeconfig is not None:
        if kubeconfig != "missing":
            path.write_text(kubeconfig)
        monkeypatch.setenv("KUBECONFIG", str(path))

    code = main(["operator", "--standalone"])

    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("kubetune operator: error: " + message.format(path=path))
