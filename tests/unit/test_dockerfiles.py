"""Dockerfile.operator and Dockerfile.trainer, linted without a Docker engine: a small parser reads
their instructions, and the tests check what the images promise (non-root, pinned, cached builds,
no secrets) and that the entrypoints they name exist in the package."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from tests.chart.conftest import render_chart

from kubetune import contract
from kubetune.cli import COMMANDS
from kubetune.manifests import TRAINER_COMMAND, TRAINER_UID

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "Dockerfile.operator"
TRAINER = REPO / "Dockerfile.trainer"
DOCKERFILES = pytest.mark.parametrize("path", [OPERATOR, TRAINER], ids=["operator image", "trainer image"])
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|[a-z0-9.+-]+-dev)\b")
OCI_LABELS = {"title", "description", "source", "licenses", "version"}


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def args(self) -> dict[str, str]:
        found = dict(self.global_args)
        for stage in self.stages:
            for rest in stage.all("ARG"):
                found.update(_assignments(rest))
        return found


def _assignments(rest: str) -> dict[str, str]:
    """`A=1 B="x y"` (ENV, ARG, LABEL) -> {"A": "1", "B": "x y"}; a bare ARG name has no default."""
    pairs = {}
    for word in shlex.split(rest):
        name, _, value = word.partition("=")
        pairs[name] = value
    return pairs


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, rest) per instruction: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions(path.read_text()):
        if keyword == "FROM":
            words = rest.split()
            stages.append(Stage(words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else ""))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            global_args.update(_assignments(rest))
    return Dockerfile(global_args, stages)


def resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)


def pins(value: str) -> dict[str, str]:
    return {r.name.lower(): str(r.specifier) for r in map(Requirement, value.split())}


def extra(name: str) -> dict[str, Requirement]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = pyproject["project"]["optional-dependencies"][name] + pyproject["project"]["dependencies"]
    return {r.name.lower(): r for r in map(Requirement, deps)}


def entrypoint(stage: Stage) -> list[str]:
    command: list[str] = json.loads(stage.all("ENTRYPOINT")[-1])
    return command + (json.loads(stage.all("CMD")[-1]) if stage.all("CMD") else [])


# ------------------------------------------------------------------------------ both images


@DOCKERFILES
def test_base_images_are_pinned_and_never_latest(path: Path) -> None:
    dockerfile = parse(path)
    stage_names = {s.name for s in dockerfile.stages}
    for stage in dockerfile.stages:
        image = resolve(stage.image, dockerfile.global_args)
        if image in stage_names:
            continue
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image} is not pinned to a version"


@DOCKERFILES
def test_the_image_runs_as_a_numeric_non_root_user(path: Path) -> None:
    users = parse(path).final.all("USER")
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0)


@DOCKERFILES
def test_no_secret_is_baked_into_env_or_args(path: Path) -> None:
    dockerfile = parse(path)
    names = set(dockerfile.args())
    names |= {name for stage in dockerfile.stages for rest in stage.all("ENV") for name in _assignments(rest)}
    assert [name for name in names if SECRET_NAME.search(name)] == []


@DOCKERFILES
def test_every_pip_install_uses_a_build_cache(path: Path) -> None:
    runs = [rest for stage in parse(path).stages for rest in stage.all("RUN") if "pip install" in rest]
    assert runs and all("--mount=type=cache,target=/root/.cache/pip" in run for run in runs)


@DOCKERFILES
def test_the_final_stage_is_multi_stage_and_has_no_compiler(path: Path) -> None:
    dockerfile = parse(path)
    assert len(dockerfile.stages) >= 2 and dockerfile.final.all("COPY")[0].startswith("--from=build ")
    final_runs = " ".join(dockerfile.final.all("RUN"))
    assert "pip install" not in final_runs and not COMPILERS.search(final_runs)


@DOCKERFILES
def test_oci_labels_name_the_image(path: Path) -> None:
    labels = {k for rest in parse(path).final.all("LABEL") for k in _assignments(rest)}
    assert {f"org.opencontainers.image.{name}" for name in OCI_LABELS} <= labels


def test_the_build_context_keeps_what_the_images_copy() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    ignored = {line for line in lines if line and not line.startswith("#")}
    assert {".git", ".venv", "tests"} <= ignored
    copies = [rest for path in (OPERATOR, TRAINER) for stage in parse(path).stages for rest in stage.all("COPY")]
    copied = {rest.split()[0] for rest in copies if not rest.startswith("--from")}
    assert copied == {"pyproject.toml", "operator", "trainer"}
    assert not copied & ignored


# --------------------------------------------------------------------------- operator image


def test_operator_image_runs_the_kubetune_operator_command() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    command = entrypoint(parse(OPERATOR).final)
    assert pyproject["project"]["scripts"][command[0]] == "kubetune.cli:main"
    assert command[1:] == ["operator"] and "operator" in COMMANDS


def test_operator_image_matches_the_chart() -> None:
    import yaml

    rendered = render_chart()["kubetune/templates/deployment.yaml"]
    pod = yaml.safe_load(rendered)["spec"]["template"]["spec"]
    command = entrypoint(parse(OPERATOR).final)
    assert pod["containers"][0]["args"] == command[1:]
    uid = int(parse(OPERATOR).final.all("USER")[-1].partition(":")[0])
    assert pod["securityContext"]["runAsUser"] == uid


def test_operator_image_installs_the_operator_extra_and_no_torch() -> None:
    dockerfile = parse(OPERATOR)
    installs = [rest for stage in dockerfile.stages for rest in stage.all("RUN") if "pip install" in rest]
    assert any('".[operator]"' in run for run in installs)
    assert "torch" not in extra("operator") and "torch" not in pins(dockerfile.args()["OPERATOR_PINS"])
    # The build checks it: importing torch must be impossible in the operator's environment.
    assert any("find_spec('torch') is None" in run for run in installs)


def test_trainer_image_runs_the_trainer_module_the_operator_starts() -> None:
    stage = parse(TRAINER).final
    assert entrypoint(stage) == TRAINER_COMMAND
    assert (REPO / "trainer" / "kubetune_trainer" / "__main__.py").is_file()
    uid = int(stage.all("USER")[-1].partition(":")[0])
    assert uid == TRAINER_UID


def test_trainer_image_keeps_the_hugging_face_cache_on_a_volume() -> None:
    stage = parse(TRAINER).final
    env = {k: v for rest in stage.all("ENV") for k, v in _assignments(rest).items()}
    assert env["HF_HOME"] == contract.HF_HOME
    volumes = {v for rest in stage.all("VOLUME") for v in json.loads(rest)}
    assert {contract.CACHE_DIR, contract.OUTPUT_DIR} <= volumes


def test_trainer_image_installs_cuda_torch_pinned_like_pyproject() -> None:
    dockerfile = parse(TRAINER)
    args = dockerfile.args()
    assert str(extra("trainer")["torch"].specifier) == f"=={args['TORCH_VERSION']}"
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d", args["TORCH_INDEX_URL"])
    runtime = resolve(dockerfile.final.image, dockerfile.global_args)
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-\w*-?runtime-ubuntu[\d.]+", runtime), runtime
    assert '".[trainer,gpu]"' in TRAINER.read_text()
    assert str(extra("gpu")["liger-kernel"].specifier) == "==0.8.5"
    assert args["FLASH_ATTENTION"] == "false" and args["FLASH_ATTENTION_VERSION"]


@pytest.mark.parametrize(
    ("path", "arg", "extra_name"),
    [(OPERATOR, "OPERATOR_PINS", "operator"), (TRAINER, "TRAINER_PINS", "trainer")],
    ids=["operator pins satisfy the operator extra", "trainer pins satisfy the trainer extra"],
)
def test_pinned_versions_satisfy_pyproject(path: Path, arg: str, extra_name: str) -> None:
    pinned = pins(parse(path).args()[arg])
    required = extra(extra_name)
    assert pinned and set(pinned) <= set(required)
    for name, specifier in pinned.items():
        version = specifier.removeprefix("==")
        assert specifier.startswith("==") and required[name].specifier.contains(version), (name, version)
