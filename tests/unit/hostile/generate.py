"""Writes the hostile corpus into files/ (the files are committed; rerun this after changing a case here,
then update expected.yaml). Run: python tests/unit/hostile/generate.py"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).parent / "files"
HEAD = "apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata:\n  name: hostile\n"
BASE = {"model": {"name": "meta-llama/Llama-3.1-8B"}, "dataset": {"name": "tatsu-lab/alpaca"},
        "method": {"type": "qlora", "quantization": {"bits": 4}}}


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def job(patch: dict[str, Any], name: str = "hostile") -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
            "spec": merge(BASE, patch)}


def spec_file(name: str, patch: dict[str, Any], comment: str) -> None:
    (OUT / name).write_text(f"# {comment}\n" + yaml.safe_dump(job(patch), sort_keys=False), encoding="utf-8")


def raw(name: str, text: str | bytes, comment: str | None = None) -> None:
    data = text if isinstance(text, bytes) else ((f"# {comment}\n" if comment else "") + text).encode()
    (OUT / name).write_bytes(data)


VOLUME = [{"claimName": "data", "mountPath": "/data"}]
HUB_JOB = "spec:\n  model: {name: meta-llama/Llama-3.1-8B}\n  dataset: {name: tatsu-lab/alpaca}\n"

# ---------------------------------------------------------------- YAML and bytes
lol = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
prev = "a"
for i in "bcdefghi":
    lol += f"{i}: &{i} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    prev = i
bomb = HEAD + HUB_JOB + \
    "  resources:\n    affinity:\n      podAffinity:\n" + "".join("        " + line + "\n" for line in lol.splitlines())
raw("alias-bomb-in-affinity.yaml", bomb, "a billion laughs inside spec.resources.affinity")
raw("alias-single.yaml", HEAD + "spec:\n  model: &m {name: meta-llama/Llama-3.1-8B}\n"
    "  dataset: {name: tatsu-lab/alpaca}\n  volumes: []\nx: *m\n", "one alias")
raw("merge-key.yaml", HEAD + "base: &b {name: meta-llama/Llama-3.1-8B}\nspec:\n  model: {<<: *b}\n"
    "  dataset: {name: tatsu-lab/alpaca}\n", "a merge key (needs an alias)")
raw("duplicate-key-spec.yaml", HEAD + HUB_JOB +
    "spec:\n  model: {name: gpt2}\n  dataset: {name: x}\n", "two spec keys: which one would kubectl apply?")
raw("duplicate-key-gpus.yaml", HEAD + HUB_JOB +
    "  resources:\n    gpus: 1\n    gpus: 8\n", "a duplicate key deep inside")
raw("deep-flow-nesting.yaml", HEAD + "spec: " + "[" * 20000 + "]" * 20000 + "\n", "20,000 nested flow sequences")
raw("deep-block-nesting-affinity.yaml", HEAD + HUB_JOB +
    "  resources:\n    affinity:\n" + "".join("  " * (3 + i) + f"k{i}:\n" for i in range(100)) + "  " * 103 + "v: 1\n",
    "100 nested mappings inside affinity")
raw("binary-random.yaml", bytes(range(256)) * 8)
raw("nul-bytes.yaml", (HEAD + "spec:\x00\n").encode())
raw("utf16.yaml", (HEAD + "spec: {}\n").encode("utf-16"))
raw("latin1-name.yaml", (HEAD.replace("hostile", "caf\xe9")).encode("latin-1"))
raw("empty.yaml", b"")
raw("only-comments.yaml", "# nothing here\n# at all\n")
raw("syntax-error-tab.yaml", HEAD + "spec:\n\tmodel: x\n", "a tab indents a block")
raw("unterminated-quote.yaml", HEAD + "spec:\n  model: {name: \"meta-llama\n", "a quote never closed")
raw("integer-5000-digits.yaml", HEAD + HUB_JOB +
    "  training: {maxSteps: " + "9" * 5000 + "}\n", "an integer Python will not convert")
raw("python-tag.yaml", HEAD + "spec: !!python/object/apply:os.system ['true']\n", "a Python object tag")
raw("scalar-document.yaml", "just a string\n")
raw("list-document.yaml", "- a\n- b\n")
raw("wrong-kind.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n")
raw("wrong-api-version.yaml", "apiVersion: kubetune.io/v9\nkind: FineTuneJob\nmetadata: {name: x}\nspec: {}\n")
raw("spec-null.yaml", HEAD + "spec: null\n")
raw("spec-is-a-list.yaml", HEAD + "spec: [1, 2]\n")
raw("name-timestamp.yaml", "apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: 2001-12-14}\n"
    "spec: {model: {name: gpt2}, dataset: {name: x}}\n", "a name YAML reads as a date")
raw("name-unicode.yaml", HEAD.replace("hostile", "ñame-ü") + "spec: {model: {name: gpt2}, dataset: {name: x}}\n")
raw("name-too-long.yaml", HEAD.replace("hostile", "a" * 300) + "spec: {model: {name: gpt2}, dataset: {name: x}}\n")
raw("labels-not-strings.yaml", HEAD + "  labels: {team: 1, on: yes}\nspec: {model: {name: gpt2}, dataset: {name: x}}\n")
two = yaml.safe_dump_all([job({}, "one"), job({}, "two")], sort_keys=False)
raw("two-jobs.yaml", two, "two valid FineTuneJobs in one file")
(OUT / "valid.json").write_text(json.dumps(job({})), encoding="utf-8")
spec_file("valid-baseline.yaml", {}, "a valid QLoRA job: every command succeeds")

# ---------------------------------------------------------------- quantities
for name, field, value in [
    ("memory-1.2.3Gi", "memory", "1.2.3Gi"), ("memory-negative", "memory", "-64Gi"),
    ("memory-1000Ei", "memory", "1000Ei"), ("memory-exponent-999", "memory", "1e999"),
    ("memory-int-1e30", "memory", 10**30), ("memory-lowercase-gi", "memory", "64gi"),
    ("memory-leading-space", "memory", " 64Gi"), ("memory-nan", "memory", float("nan")),
    ("memory-too-small", "memory", "1Ki"), ("memory-5000-chars", "memory", "1" * 5000),
    ("cpu-zero", "cpu", "0"), ("cpu-kb-suffix", "cpu", "8KB"), ("cpu-float", "cpu", 0.5),
    ("cpu-infinity", "cpu", "Infinity"), ("cpu-million-cores", "cpu", "1M"),
    ("shared-memory-1.2.3Gi", "sharedMemory", "1.2.3Gi"), ("shared-memory-negative-int", "sharedMemory", -1),
]:
    spec_file(f"{name}.yaml", {"resources": {field: value}}, f"spec.resources.{field}: {value!r:.40}")

# ---------------------------------------------------------------- integers and sizes
spec_file("active-deadline-2-63.yaml", {"activeDeadlineSeconds": 2**63}, "one past int64")
spec_file("ttl-1e30.yaml", {"ttlSecondsAfterFinished": 10**30}, "far past int64")
spec_file("toleration-seconds-2-64.yaml", {"resources": {"tolerations": [
    {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2**64}]}}, "past int64")
spec_file("max-steps-1e30.yaml", {"training": {"maxSteps": 10**30}}, "past int64")
spec_file("seed-negative.yaml", {"training": {"seed": -1}}, "a negative seed")
spec_file("epochs-infinite.yaml", {"training": {"epochs": float("inf")}}, ".inf epochs")
spec_file("learning-rate-nan.yaml", {"training": {"learningRate": float("nan")}}, ".nan learning rate")
spec_file("architecture-10-400-parameters.yaml", {"model": {"name": None, "path": "/data/model", "architecture": {
    "parameters": 10**400, "hiddenSize": 4096, "numLayers": 32, "numAttentionHeads": 32, "intermediateSize": 14336,
    "vocabSize": 128256}}, "volumes": VOLUME}, "a 10^400-parameter architecture")
spec_file("architecture-hidden-2-21.yaml", {"model": {"name": None, "path": "/data/model", "architecture": {
    "hiddenSize": 2**21, "numLayers": 32, "numAttentionHeads": 32, "intermediateSize": 14336, "vocabSize": 128256}},
    "volumes": VOLUME}, "a hidden size past the physical bound")
spec_file("architecture-at-every-bound.yaml", {"model": {"name": None, "path": "/data/model", "architecture": {
    "parameters": 10**14, "hiddenSize": 2**20, "numLayers": 1024, "numAttentionHeads": 4096, "numKeyValueHeads": 4096,
    "intermediateSize": 2**22, "vocabSize": 2**24}}, "volumes": VOLUME,
    "training": {"batchSize": 4096, "maxSeqLength": 262144, "gradientAccumulationSteps": 4096}},
    "every size at its largest valid value: a clear NoFit, never an overflow")
spec_file("huge-batch-and-sequence.yaml", {"training": {"batchSize": 4096, "maxSeqLength": 262144,
                                                        "gradientAccumulationSteps": 4096}},
          "valid but absurd: suggestions must stay within the bounds (gradientAccumulationSteps <= 4096)")
spec_file("full-405b-one-gpu.yaml", {"model": {"name": "meta-llama/Llama-3.1-405B"}, "method": {"type": "full",
                                                                                               "quantization": None}},
          "valid, far too large for the cluster")
spec_file("batch-size-bool.yaml", {"training": {"batchSize": True}}, "a boolean where an integer goes")
spec_file("gpus-string.yaml", {"resources": {"gpus": "eight"}}, "a word where an integer goes")
spec_file("env-65-variables.yaml", {"env": [{"name": f"V{i}", "value": "x"} for i in range(65)]}, "too many variables")

# ---------------------------------------------------------------- labels, selectors, refs
spec_file("node-selector-bad-key.yaml", {"resources": {"nodeSelector": {"bad key!": "x"}}}, "not a label key")
spec_file("node-selector-long-value.yaml", {"resources": {"nodeSelector": {"zone": "v" * 64}}}, "a 64-char label value")
spec_file("node-selector-value-slash.yaml", {"resources": {"nodeSelector": {"zone": "a/b"}}}, "a '/' in a label value")
spec_file("toleration-bad-key.yaml",
          {"resources": {"tolerations": [{"key": "no spaces allowed", "operator": "Exists"}]}}, "not a taint key")
spec_file("revision-dot-dot.yaml", {"model": {"revision": "../../../etc/passwd"}}, "a path, not a git ref")
spec_file("revision-query.yaml", {"model": {"revision": "main?download=1"}}, "a '?' would change the URL")
spec_file("revision-fragment.yaml", {"model": {"revision": "main#x"}}, "a '#' would cut the URL")
spec_file("dataset-revision-space.yaml", {"dataset": {"revision": "my branch"}}, "a space in a ref")

# ---------------------------------------------------------------- paths and volumes
spec_file("model-path-traversal.yaml", {"model": {"name": None, "path": "/data/../../etc"}, "volumes": VOLUME},
          "normalised, the path is /etc: on no volume")
spec_file("dataset-path-traversal.yaml", {"dataset": {"name": None, "path": "/data/../root/.ssh/id_rsa"},
                                          "volumes": VOLUME}, "normalised, /root/.ssh: on no volume")
for name, mount in [("proc", "/proc"), ("var-run-secrets", "/var/run/secrets/kubernetes.io"), ("lib64", "/lib64"),
                    ("etc", "/etc/ssl"), ("usr", "/usr"), ("dev", "/dev"), ("opt-kubetune", "/opt/kubetune"),
                    ("dot-dot", "/data/../etc"), ("root", "/")]:
    spec_file(f"mount-path-{name}.yaml", {"model": {"name": None, "path": mount.rstrip("/") + "/model"},
                                          "volumes": [{"claimName": "data", "mountPath": mount}]},
              f"a volume mounted at {mount}")

# ---------------------------------------------------------------- secrets and URLs
spec_file("dataset-url-user-password.yaml", {"dataset": {"name": None,
                                                         "url": "https://alice:s3cr3t-pw@data.example.com/train.jsonl"}},
          "credentials in the URL: refused, and never echoed")
spec_file("dataset-url-token-query.yaml", {"dataset": {"name": None,
                                                       "url": "https://data.example.com/train.jsonl?token=s3cr3t-pw"}},
          "a token in the query: refused, and never echoed")
spec_file("dataset-url-signed.yaml", {"dataset": {"name": None, "url":
                                                  "https://b.s3.amazonaws.com/t.jsonl?X-Amz-Signature=s3cr3t-pw"}},
          "a pre-signed URL is a credential")
spec_file("dataset-url-ftp.yaml", {"dataset": {"name": None, "url": "ftp://data.example.com/train.jsonl"}},
          "not http(s)")
spec_file("dataset-url-bad-port.yaml", {"dataset": {"name": None, "url": "https://data.example.com:99999/t.jsonl"}},
          "a port out of range")
spec_file("env-hf-token-literal.yaml", {"env": [{"name": "HF_TOKEN", "value": "hf_s3cr3t"}]},
          "the token belongs in hfTokenSecretRef")

# ---------------------------------------------------------------- affinity
spec_file("affinity-node-affinity-string.yaml", {"resources": {"affinity": {"nodeAffinity": "everywhere"}}},
          "nodeAffinity is not a mapping")
spec_file("affinity-terms-not-a-list.yaml", {"resources": {"affinity": {"nodeAffinity": {
    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": {"a": 1}}}}}}, "terms must be a list")
spec_file("affinity-bad-operator.yaml", {"resources": {"affinity": {"nodeAffinity": {
    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "zone", "operator": "Like", "values": ["a"]}]}]}}}}}, "an operator Kubernetes does not have")
spec_file("affinity-unknown-key.yaml", {"resources": {"affinity": {"nodeAfinity": {}}}}, "a misspelt key")
spec_file("affinity-valid-gt.yaml", {"resources": {"affinity": {"nodeAffinity": {
    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "gpu-count", "operator": "Gt", "values": ["not-a-number"]}]}]}}}}},
          "valid shape, a Gt bound that is no number: matches no node, so NoFit, no crash")
spec_file("architecture-largest-valid.yaml", {"model": {"name": None, "path": "/data/model", "architecture": {
    "hiddenSize": 65536, "numLayers": 1024, "numAttentionHeads": 512, "intermediateSize": 262144,
    "vocabSize": 2**24}}, "volumes": VOLUME,
    "training": {"batchSize": 4096, "maxSeqLength": 262144, "gradientAccumulationSteps": 4096}},
    "some 7e13 parameters at the largest batch and sequence: a clear NoFit, never an overflow")
spec_file("architecture-parameters-below-dims.yaml", {"model": {"name": None, "path": "/data/model", "architecture": {
    "parameters": 1, "hiddenSize": 4096, "numLayers": 32, "numAttentionHeads": 32, "intermediateSize": 14336,
    "vocabSize": 128256}}, "volumes": VOLUME}, "one parameter for an 8B shape: the estimate would go negative")
spec_file("suggestion-beyond-a-bound.yaml", {"method": {"type": "lora", "quantization": None}, "training": {
    "batchSize": 16, "gradientAccumulationSteps": 4096, "maxSeqLength": 2048, "gradientCheckpointing": False}},
    "a smaller batch would need 8192 accumulation steps (the bound is 4096): that suggestion is dropped")
raw("label-key-not-a-label.yaml",
    HEAD + "  labels: {'team name!': a}\nspec: {model: {name: gpt2}, dataset: {name: x}}\n",
    "a metadata label key the API server would refuse")
print(len(list(OUT.iterdir())), "files")
