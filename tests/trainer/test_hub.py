"""Models and datasets load by hub id, at a revision, with HF_TOKEN, from a Hub emulated on loopback (hub.py);
hub failures are kubetune's errors naming the field."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import FineTuneJobSpec
from kubetune_trainer import data, model, tiny, train
from kubetune_trainer.errors import DatasetError, ModelLoadError

from . import hub
from .conftest import ContextFactory, SpecFactory

TOKEN = "hf_emulated_reader"
MODEL, PRIVATE_MODEL = "kubetune/tiny-llama", "kubetune/private-llama"
DATASET, PRIVATE_DATASET = "kubetune/tiny-instructions", "kubetune/private-instructions"
MODEL_HINT = "check the id, the revision and that HF_TOKEN can read it"


@dataclass(frozen=True)
class ModelRevision:
    """What tells the model's revisions apart: its depth and its tokenizer's max length."""

    num_hidden_layers: int
    model_max_length: int

    def save(self, directory: Path) -> Path:
        tiny.save_tiny_model(directory, num_hidden_layers=self.num_hidden_layers)
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps({**config, "model_max_length": self.model_max_length}))
        return directory


@dataclass(frozen=True)
class DatasetRevision:
    """What tells the dataset's revisions apart: its rows, and the file type they are stored in."""

    count: int
    seed: int
    file: str

    def rows(self) -> list[dict[str, str]]:
        return tiny.instruction_rows(self.count, self.seed)

    def save(self, directory: Path) -> Path:
        import datasets

        target = directory / self.file
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.suffix == ".parquet":
            datasets.Dataset.from_list(self.rows()).to_parquet(target)
        else:
            tiny.write_jsonl(target, self.rows())
        return directory


MODEL_REVISIONS = {"main": ModelRevision(2, 128), "v1": ModelRevision(1, 64)}
DATASET_REVISIONS = {"main": DatasetRevision(24, 0, "data/train.jsonl"),
                     "v1": DatasetRevision(12, 1, "data/train.parquet")}


@pytest.fixture(scope="module")
def emulated_hub(tmp_path_factory: pytest.TempPathFactory) -> hub.HubEmulation:
    """A public model and dataset at main and v1, and private copies of their main."""
    root = tmp_path_factory.mktemp("hub")
    models = {ref: revision.save(root / "model" / ref) for ref, revision in MODEL_REVISIONS.items()}
    rows = {ref: revision.save(root / "dataset" / ref) for ref, revision in DATASET_REVISIONS.items()}
    return hub.HubEmulation(
        (
            hub.Repo(MODEL, "model", models),
            hub.Repo(DATASET, "dataset", rows),
            hub.Repo(PRIVATE_MODEL, "model", {"main": models["main"]}, private=True),
            hub.Repo(PRIVATE_DATASET, "dataset", {"main": rows["main"]}, private=True),
        ),
        TOKEN,
    )


@pytest.fixture
def hub_endpoint(emulated_hub: hub.HubEmulation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The emulated Hub serving, and the libraries pointed at it with empty caches."""
    with hub.serving(emulated_hub) as endpoint:
        hub.point_libraries_at(endpoint, tmp_path / "hf-home", monkeypatch)
        yield endpoint


@pytest.mark.parametrize(
    ("target", "authorization", "status", "error_code"),
    [
        (f"/{MODEL}/resolve/v1/config.json", None, 200, None),
        (f"/{PRIVATE_MODEL}/resolve/main/config.json", None, 401, "RepoNotFound"),
        (f"/{PRIVATE_MODEL}/resolve/main/config.json", f"Bearer {TOKEN}", 200, None),
        ("/kubetune/nowhere/resolve/main/config.json", f"Bearer {TOKEN}", 404, "RepoNotFound"),
        (f"/{MODEL}/resolve/main/config.json", "Bearer hf_expired", 401, None),
        (f"/api/models/{MODEL}/revision/v9", None, 404, "RevisionNotFound"),
        (f"/datasets/{DATASET}/resolve/main/README.md", None, 404, "EntryNotFound"),
        (f"/api/datasets/{DATASET}/tree/v1/data?recursive=false", None, 200, None),
        (f"/api/models/{MODEL}/refs", None, 501, None),
    ],
    ids=[
        "a file at a tag is served",
        "a private repo without a token is RepoNotFound 401, like a missing one",
        "a private repo with the token is served",
        "an unknown repo with a token is RepoNotFound 404",
        "a token the Hub does not know is 401 whatever the repo",
        "an unknown revision is RevisionNotFound",
        "a missing file is EntryNotFound",
        "a directory at a tag is listed",
        "an endpoint the emulation does not serve is 501, not a silent 404",
    ],
)
def test_the_emulation_answers_as_the_hub_does(emulated_hub: hub.HubEmulation, target: str,
                                               authorization: str | None, status: int,
                                               error_code: str | None) -> None:
    headers = {"authorization": authorization} if authorization else {}

    reply = emulated_hub.answer("GET", target, headers)

    assert (reply.status, reply.headers.get("X-Error-Code")) == (status, error_code)


def by_hub_id(model_id: str = MODEL, dataset_id: str = DATASET, model_revision: str = "main",
              dataset_revision: str | None = None) -> dict[str, Any]:
    """Spec changes that load the model and the dataset by hub id."""
    return {
        "model": {"path": None, "name": model_id, "revision": model_revision},
        "dataset": {"path": None, "name": dataset_id, "revision": dataset_revision},
    }


@dataclass(frozen=True)
class Loader:
    """One of kubetune's hub loaders, the error it raises and the field and hint that error names."""

    load: Callable[[FineTuneJobSpec, str | None], Any]
    error: type[Exception]
    field: str
    hint: str


TOKENIZER = Loader(model.load_tokenizer, ModelLoadError, "spec.model.name", MODEL_HINT)
MODEL_WEIGHTS = Loader(lambda spec, token: model.load_model(spec, model.Precision("float32"), "sdpa", token, None),
                       ModelLoadError, "spec.model.name", MODEL_HINT)
TRAINING_DATA = Loader(data.load_training_data, DatasetError, "spec.dataset.name", data.HUB_HINT)


@pytest.mark.usefixtures("hub_endpoint")
@pytest.mark.parametrize(
    ("model_id", "revision", "token"),
    [(MODEL, "main", None), (MODEL, "v1", None), (PRIVATE_MODEL, "main", TOKEN)],
    ids=[
        "the model and tokenizer load by hub id from main",
        "revision v1 loads the v1 model and tokenizer, not main's",
        "a private model loads with HF_TOKEN",
    ],
)
def test_model_and_tokenizer_load_by_hub_id(make_spec: SpecFactory, model_id: str, revision: str,
                                            token: str | None) -> None:
    spec = make_spec(by_hub_id(model_id, model_revision=revision))

    tokenizer, loaded = TOKENIZER.load(spec, token), MODEL_WEIGHTS.load(spec, token)

    expected = MODEL_REVISIONS[revision]
    assert loaded.config.num_hidden_layers == expected.num_hidden_layers
    assert tokenizer.model_max_length == expected.model_max_length
    assert tokenizer.pad_token == tiny.EOS


@pytest.mark.usefixtures("hub_endpoint")
@pytest.mark.parametrize(
    ("dataset_id", "revision", "token", "expected"),
    [
        (DATASET, None, None, "main"),
        (DATASET, "main", None, "main"),
        (DATASET, "v1", None, "v1"),
        (PRIVATE_DATASET, None, TOKEN, "main"),
    ],
    ids=[
        "without a revision the dataset loads from the default branch",
        "revision main loads the jsonl rows of main",
        "revision v1 loads the parquet rows of v1, not main's",
        "a private dataset loads with HF_TOKEN",
    ],
)
def test_dataset_loads_by_hub_id(make_spec: SpecFactory, dataset_id: str, revision: str | None, token: str | None,
                                 expected: str) -> None:
    spec = make_spec(by_hub_id(dataset_id=dataset_id, dataset_revision=revision))

    train_rows, evaluation = TRAINING_DATA.load(spec, token)

    rows = DATASET_REVISIONS[expected].rows()
    assert len(train_rows) == len(rows)
    assert train_rows[0] == {"prompt": rows[0]["prompt"] + "\n\n", "completion": rows[0]["response"]}
    assert evaluation is None


@pytest.mark.usefixtures("hub_endpoint")
@pytest.mark.parametrize(
    ("loader", "changes", "token", "repo_id"),
    [
        (TOKENIZER, by_hub_id(PRIVATE_MODEL), None, PRIVATE_MODEL),
        (MODEL_WEIGHTS, by_hub_id(PRIVATE_MODEL), None, PRIVATE_MODEL),
        (MODEL_WEIGHTS, by_hub_id(PRIVATE_MODEL), "hf_expired", PRIVATE_MODEL),
        (MODEL_WEIGHTS, by_hub_id("kubetune/no-such-model"), TOKEN, "kubetune/no-such-model"),
        (TOKENIZER, by_hub_id(model_revision="v9"), None, MODEL),
        (MODEL_WEIGHTS, by_hub_id(model_revision="v9"), None, MODEL),
        (TRAINING_DATA, by_hub_id(dataset_id=PRIVATE_DATASET), None, PRIVATE_DATASET),
        (TRAINING_DATA, by_hub_id(dataset_id=PRIVATE_DATASET), "hf_expired", PRIVATE_DATASET),
        (TRAINING_DATA, by_hub_id(dataset_id="kubetune/no-such-data"), TOKEN, "kubetune/no-such-data"),
        (TRAINING_DATA, by_hub_id(dataset_revision="v9"), None, DATASET),
    ],
    ids=[
        "a private model's tokenizer without HF_TOKEN is a ModelLoadError naming spec.model.name",
        "a private model without HF_TOKEN is a ModelLoadError naming spec.model.name",
        "a token the Hub rejects is a ModelLoadError naming spec.model.name",
        "an unknown model id is a ModelLoadError naming spec.model.name",
        "an unknown model revision fails the tokenizer with a ModelLoadError",
        "an unknown model revision fails the model with a ModelLoadError",
        "a private dataset without HF_TOKEN is a DatasetError naming spec.dataset.name",
        "a dataset read with a token the Hub rejects is a DatasetError naming spec.dataset.name",
        "an unknown dataset id is a DatasetError naming spec.dataset.name",
        "an unknown dataset revision is a DatasetError naming spec.dataset.name",
    ],
)
def test_hub_failures_are_kubetune_errors_naming_the_field(make_spec: SpecFactory, loader: Loader,
                                                           changes: dict[str, Any], token: str | None,
                                                           repo_id: str) -> None:
    with pytest.raises(loader.error) as raised:
        loader.load(make_spec(changes), token)

    message = str(raised.value)
    assert message.startswith(f"{loader.field}: ")
    assert repr(repo_id) in message or f"{repo_id}: " in message
    assert message.endswith(loader.hint)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@pytest.mark.usefixtures("hub_endpoint")
def test_a_run_fine_tunes_a_private_hub_model_on_a_hub_dataset_revision(make_context: ContextFactory) -> None:
    changes = {**by_hub_id(PRIVATE_MODEL, dataset_revision="v1"), "training": {"maxSteps": 3}}

    report = train.run(make_context(changes, hf_token=TOKEN))

    assert report["steps"] == 3
    assert (Path(report["output_path"]) / "adapter_model.safetensors").is_file()
