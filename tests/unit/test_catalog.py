"""The model catalog: lookups, dimensions, config.json parsing and the hub fallback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubetune.catalog import (
    CATALOG,
    HubConfigSource,
    UnknownModelError,
    from_config,
    lookup,
    read_local_config,
    resolve_architecture,
)
from kubetune.validation import parse_spec


@pytest.mark.parametrize(
    ("hub_id", "catalog_key"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/llama-3.1-8b"),
        ("META-LLAMA/LLAMA-2-7B-CHAT-HF", "meta-llama/llama-2-7b-hf"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/meta-llama-3-8b"),
        ("google/gemma-2-9b-it", "google/gemma-2-9b"),
        ("google/gemma-3-1b-it", "google/gemma-3-1b-pt"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen/qwen2.5-7b"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistralai/mistral-7b-v0.1"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistralai/mistral-7b-v0.3"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mistralai/mixtral-8x7b-v0.1"),
        ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "tinyllama/tinyllama-1.1b-intermediate-step-1431k-3t"),
        ("microsoft/Phi-3-mini-128k-instruct", "microsoft/phi-3-mini-4k-instruct"),
        ("gpt2", "openai-community/gpt2"),
        ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "huggingfacetb/smollm2-1.7b"),
    ],
    ids=[
        "an instruct variant has its base model's dimensions",
        "lookups ignore case and the -chat-hf suffix",
        "Meta-Llama-3 naming",
        "gemma -it variants",
        "gemma 3 -it maps to the -pt checkpoint",
        "qwen instruct",
        "mistral v0.2 instruct has v0.1's 32000 vocabulary",
        "mistral v0.3 instruct keeps its own 32768 vocabulary",
        "mixtral instruct",
        "TinyLlama chat",
        "phi-3 128k context has the 4k model's dimensions",
        "the short gpt2 name",
        "SmolLM2 instruct",
    ],
)
def test_lookup_finds_variants(hub_id: str, catalog_key: str) -> None:
    assert lookup(hub_id) is CATALOG[catalog_key]


def test_an_unknown_id_is_not_found() -> None:
    assert lookup("acme/llama-3.1-8b-but-different") is None


@pytest.mark.parametrize("key", sorted(k for k, a in CATALOG.items() if a.published_parameters), ids=str)
def test_dimensions_add_up_to_the_published_parameter_count(key: str) -> None:
    architecture = CATALOG[key]
    # Counted from the dimensions (no biases, no position embeddings): within 1% of the model card.
    assert architecture.counted_parameters == pytest.approx(architecture.published_parameters, rel=0.01)


def test_the_families_the_issue_names_are_in_the_catalog() -> None:
    for hub_id in ("meta-llama/Llama-2-13b-hf", "meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.1-405B",
                   "meta-llama/Llama-3.3-70B-Instruct", "Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen2-0.5B",
                   "google/gemma-7b", "google/gemma-3-27b-it", "microsoft/phi-2", "microsoft/Phi-3.5-mini-instruct",
                   "microsoft/phi-4", "tiiuae/falcon-7b", "HuggingFaceTB/SmolLM2-135M"):
        assert lookup(hub_id) is not None, hub_id


LLAMA_CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "tie_word_embeddings": False}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (LLAMA_CONFIG, {"hidden_size": 64, "num_key_value_heads": 2, "mlp": "gated", "fused": False}),
        ({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257},
         {"hidden_size": 768, "intermediate_size": 3072, "num_key_value_heads": 12, "mlp": "plain",
          "tie_word_embeddings": True, "fused": True}),
        ({"model_type": "falcon", "hidden_size": 4544, "num_hidden_layers": 32, "num_attention_heads": 71,
          "multi_query": True, "vocab_size": 65024}, {"num_key_value_heads": 1, "intermediate_size": 18176}),
        ({"model_type": "gemma3", "tie_word_embeddings": True, "text_config": {
            "hidden_size": 2560, "num_hidden_layers": 34, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "intermediate_size": 10240, "vocab_size": 262208}},
         {"hidden_size": 2560, "head_dim": 256, "tie_word_embeddings": True}),
        ({**LLAMA_CONFIG, "model_type": "mixtral", "num_local_experts": 8}, {"num_experts": 8}),
    ],
    ids=["a llama config.json", "GPT-2 names its dimensions n_embd, n_layer, n_head",
         "falcon's multi-query attention has one kv head", "a multimodal config uses its text_config",
         "mixture-of-experts configs count their experts"],
)
def test_from_config(config: dict[str, Any], expected: dict[str, Any]) -> None:
    architecture = from_config(config, "test")
    for name, value in expected.items():
        assert getattr(architecture, name) == value


def test_a_config_without_dimensions_is_an_unknown_model() -> None:
    with pytest.raises(UnknownModelError, match="lacks hidden_size"):
        from_config({"model_type": "mystery"}, "acme/model")


def test_local_config_json_is_read_when_present(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    assert read_local_config(str(tmp_path)) == from_config(LLAMA_CONFIG, str(tmp_path / "config.json"))
    assert read_local_config(str(tmp_path / "missing")) is None
    (tmp_path / "config.json").write_text("{not json")
    assert read_local_config(str(tmp_path)) is None


def spec_for(model: dict[str, Any]) -> Any:
    volumes = [{"claimName": "models", "mountPath": "/models"}] if "path" in model else []
    return parse_spec({"model": model, "dataset": {"name": "a/b"}, "volumes": volumes})


def test_resolution_order(tmp_path: Path) -> None:
    architecture = {"hiddenSize": 64, "numLayers": 2, "numAttentionHeads": 4, "intermediateSize": 128,
                    "vocabSize": 1000}
    assert resolve_architecture(spec_for({"name": "meta-llama/Llama-3.1-8B"})) is CATALOG["meta-llama/llama-3.1-8b"]
    overridden = resolve_architecture(spec_for({"name": "meta-llama/Llama-3.1-8B", "architecture": architecture}))
    assert overridden.hidden_size == 64 and overridden.num_key_value_heads == 4
    with pytest.raises(UnknownModelError) as error:
        resolve_architecture(spec_for({"path": "/models/nowhere"}))
    assert "spec.model.architecture" in str(error.value) and "config.json" in str(error.value)


def test_a_model_path_with_config_json_needs_no_catalog_entry(tmp_path: Path, monkeypatch: Any) -> None:
    models = tmp_path / "models" / "tiny"
    models.mkdir(parents=True)
    (models / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    spec = spec_for({"path": "/models/tiny"})
    monkeypatch.setattr(spec.model, "path", str(models))
    assert resolve_architecture(spec).hidden_size == 64


# --------------------------------------------------------------------------------- hub fallback


class HubStub(BaseHTTPRequestHandler):
    """Serves /<org>/<name>/resolve/<revision>/config.json for one known model; records requests."""

    requests: list[tuple[str, str | None]] = []  # noqa: RUF012 - shared by the server's handler instances

    def do_GET(self) -> None:
        HubStub.requests.append((self.path, self.headers.get("Authorization")))
        if self.path == "/acme/tiny/resolve/main/config.json":
            body = json.dumps(LLAMA_CONFIG).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/acme/private/resolve/main/config.json":
            self.send_error(401)  # the Hub answers 401 to a token (or no token) that cannot read the repo
        elif self.path == "/acme/garbled/resolve/main/config.json":
            self.send_response(200)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"not json!")
        else:
            self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hub_url() -> Iterator[str]:
    HubStub.requests = []
    server = HTTPServer(("127.0.0.1", 0), HubStub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_hub_config_is_fetched_with_the_token_and_cached(hub_url: str) -> None:
    hub = HubConfigSource(endpoint=hub_url, token="hf_secret")
    fetched = hub.fetch("acme/tiny", "main")
    assert fetched is not None and fetched.hidden_size == 64
    assert hub.fetch("acme/tiny", "main") is fetched
    assert HubStub.requests == [("/acme/tiny/resolve/main/config.json", "Bearer hf_secret")]


def test_the_hub_fallback_resolves_models_outside_the_catalog(hub_url: str) -> None:
    spec = spec_for({"name": "acme/tiny"})
    assert resolve_architecture(spec, HubConfigSource(endpoint=hub_url)).hidden_size == 64


@pytest.mark.parametrize(
    "endpoint", ["missing model", "http://127.0.0.1:9"], ids=["the hub answers 404", "the hub is unreachable"])
def test_the_hub_fallback_fails_cleanly(hub_url: str, endpoint: str) -> None:
    url = hub_url if endpoint == "missing model" else endpoint
    hub = HubConfigSource(endpoint=url, timeout=1.0)
    assert hub.fetch("acme/other", "main") is None
    assert hub.cache == {}  # failures are not cached: the next reconcile asks again
    with pytest.raises(UnknownModelError):
        resolve_architecture(spec_for({"name": "acme/other"}), hub)


@pytest.mark.parametrize(
    ("model", "endpoint", "token", "reason"),
    [
        ("acme/other", "stub", None, "no such model, revision or file on the hub (HTTP 404)"),
        ("acme/private", "stub", None, "the hub refused access (HTTP 401): a private or gated model needs HF_TOKEN"),
        ("acme/private", "stub", "hf_wrong", "the hub refused access (HTTP 401): the HF_TOKEN given cannot read it"),
        ("acme/tiny", "http://127.0.0.1:9", None, "cannot reach the hub (no network, or HF_ENDPOINT is wrong)"),
        ("acme/garbled", "stub", None, "the hub's answer is not JSON"),
    ],
    ids=["a missing model says 404 and what to check", "a private model without a token asks for HF_TOKEN",
         "a token the hub refuses is named", "an unreachable hub says no network",
         "an answer that is not JSON says so"],
)
def test_a_failed_fetch_says_why(hub_url: str, model: str, endpoint: str, token: str | None, reason: str) -> None:
    hub = HubConfigSource(endpoint=hub_url if endpoint == "stub" else endpoint, token=token, timeout=1.0)
    assert hub.fetch(model, "main") is None
    assert hub.last_failure is not None
    assert f"/{model}/resolve/main/config.json: {reason}" in hub.last_failure


def test_hf_endpoint_sets_the_default_hub(monkeypatch: Any) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.internal")
    assert HubConfigSource().endpoint == "http://mirror.internal"
