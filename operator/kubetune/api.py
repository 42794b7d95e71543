"""The FineTuneJob API (kubetune.io/v1alpha1): the single source of truth.

The CRD (`kubetune.crd`), docs/api.md and the examples follow these models. Field docs are the
attribute docstrings below; they become the CRD's descriptions. Python names are snake_case, the
wire format is camelCase (`learning_rate` <-> `learningRate`).
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from pydantic.alias_generators import to_camel

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
CATEGORIES = ("kubetune",)

# Children are named "<name>-<suffix>"; a Job name must stay a 63-character DNS label.
MAX_NAME_LENGTH = 52
# Strings are bounded so that the CRD's CEL rules have a bounded cost.
SHORT_TEXT = 253
LONG_TEXT = 4096

# The API server stores integers as int64: a larger one is refused there, or wraps in a client.
INT64_MAX = 2**63 - 1

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
HUB_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$"
ABSOLUTE_PATH = r"^/[^\x00]*$"
# No '@' before the path: user info (credentials) in a URL is refused by the schema already.
HTTP_URL = r"^https?://[^\s/?#@]+([/?#][^\s]*)?$"
# A git ref as the hub takes it (branch, tag, commit, refs/pr/N): no '..', '?', '#', space or '~^:\\'
# (git check-ref-format); the '..' rule is checked apart, since the CRD's regex dialect has no look-ahead.
GIT_REF = r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"
# apimachinery's resource.Quantity grammar: a decimal number, then a binary-SI suffix (Ki..Ei), a
# decimal-SI suffix (n u m k M G T P E) or a decimal exponent. No sign: kubetune's quantities are
# amounts, and a negative one is refused by the range rules below anyway.
QUANTITY = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]{1,3}))?$"
QUANTITY_MAX_LENGTH = 64
QUANTITY_MULTIPLIERS: dict[str, Decimal] = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}
# Kubernetes label syntax (also nodeSelector and toleration keys): [DNS-subdomain prefix/]name.
LABEL_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + LABEL_NAME + "$"
LABEL_VALUE = r"^" + LABEL_NAME + "?$"
# Kubernetes' classic rule for environment variable names (letters, digits, '_', '-', '.'; no leading digit).
ENV_VAR_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"

DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL, min_length=1, max_length=63)]
HubRepoId = Annotated[str, StringConstraints(pattern=HUB_REPO_ID, min_length=1, max_length=SHORT_TEXT)]
AbsolutePath = Annotated[str, StringConstraints(pattern=ABSOLUTE_PATH, min_length=1, max_length=LONG_TEXT)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=SHORT_TEXT)]
# A prefix of up to 253 characters, '/', and a name of up to 63.
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY, min_length=1, max_length=317)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE, max_length=63)]


def _check_git_ref(value: str) -> str:
    if ".." in value or value.endswith(("/", ".", ".lock")) or "//" in value:
        raise ValueError(f"{value!r} is not a git ref (no '..', '//', and no '/', '.' or '.lock' at the end); "
                         "give a branch, tag or commit")
    return value


GitRef = Annotated[
    str, StringConstraints(pattern=GIT_REF, min_length=1, max_length=SHORT_TEXT), AfterValidator(_check_git_ref)
]


def quantity_value(quantity: int | str) -> Decimal:
    """A Kubernetes quantity ("64Gi", "500m", "1e9", 8) as a number, or ValueError off the grammar."""
    if isinstance(quantity, int):
        return Decimal(quantity)
    match = re.fullmatch(QUANTITY, quantity) if len(quantity) <= QUANTITY_MAX_LENGTH else None
    if match is None:
        raise ValueError(f"{quantity[:QUANTITY_MAX_LENGTH]!r} is not a Kubernetes quantity; "
                         "write it like 8, 500m or 64Gi")
    number, suffix, exponent = match.group(1), match.group(5) or "", match.group(7)
    if exponent is not None:
        return Decimal(number) * Decimal(10) ** int(exponent[1:])
    return Decimal(number) * QUANTITY_MULTIPLIERS[suffix]


def _quantity_in(minimum: Decimal, maximum: Decimal, shown: str) -> AfterValidator:
    def check(value: int | str) -> int | str:
        amount = quantity_value(value)
        if not minimum <= amount <= maximum:
            raise ValueError(f"{str(value)[:QUANTITY_MAX_LENGTH]!r} is out of range: give {shown}")
        return value

    return AfterValidator(check)


def _integer_or_text(value: Any) -> Any:
    """A quantity is an integer or a string; anything else (a float, true, a list) is refused here, in one
    message, before the union's two branches each report their own."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be an integer or a quantity string like 8, 500m or 64Gi; got {str(value)[:40]!r}")
    return value


def _quantity_schema(minimum: Decimal, maximum: Decimal) -> Any:
    """The CRD's side of a quantity: the grammar and length for a string, the range for an integer."""
    return Field(json_schema_extra={
        "x-kubernetes-int-or-string": True, "quantityPattern": QUANTITY, "quantityMaxLength": QUANTITY_MAX_LENGTH,
        "quantityMinimum": int(minimum.to_integral_value("ROUND_CEILING")), "quantityMaximum": int(maximum),
    })


# The largest machines have a few hundred cores and a few TiB; these bounds leave room and still
# catch a typo of several orders of magnitude (and keep every arithmetic on them finite).
MAX_CPU_CORES = Decimal(4096)
MIN_CPU_CORES = Decimal("0.001")
MAX_MEMORY_BYTES = Decimal(2) ** 46
# 64 Mi: less cannot start the trainer's Python (and half of it, the default /dev/shm, is still 32 Mi).
MIN_MEMORY_BYTES = Decimal(2) ** 26
CpuQuantity = Annotated[
    int | str,
    BeforeValidator(_integer_or_text),
    _quantity_in(MIN_CPU_CORES, MAX_CPU_CORES, "between 1m and 4096 (cores)"),
    _quantity_schema(MIN_CPU_CORES, MAX_CPU_CORES),
]
MemoryQuantity = Annotated[
    int | str,
    BeforeValidator(_integer_or_text),
    _quantity_in(MIN_MEMORY_BYTES, MAX_MEMORY_BYTES, "between 64Mi and 64Ti"),
    _quantity_schema(MIN_MEMORY_BYTES, MAX_MEMORY_BYTES),
]

# Credentials in a URL would be stored in the spec, readable by anyone who may read FineTuneJobs.
CREDENTIAL_QUERY_KEYS = ("token", "key", "secret", "password", "passwd", "signature", "sig", "credential", "auth")
# The same rule for the CRD (RE2): a query parameter whose name holds one of those words.
CREDENTIAL_QUERY = r"(?i)[?&][^=&#]*(" + "|".join(CREDENTIAL_QUERY_KEYS) + r")[^=&#]*="


def redact_url(url: str) -> str:
    """The URL without user info, query and fragment: what messages, statuses, Events and logs show."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unparseable URL)"
    hidden = " (query hidden)" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{hidden}"


def _refuse_credentials(url: Any) -> Any:
    """Runs before the URL pattern, so that credentials get this message (and are never echoed)."""
    if not isinstance(url, str):
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if not parts.hostname:
        raise ValueError(f"{redact_url(url)} names no host")
    query_keys = [key.lower() for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    if parts.username is not None or parts.password is not None or any(
        word in key for key in query_keys for word in CREDENTIAL_QUERY_KEYS
    ):
        raise ValueError(
            f"{redact_url(url)} carries credentials (user info or a token in the query); the spec is readable by "
            "anyone who may read FineTuneJobs: put the file on a volume (spec.volumes and path) or in a private "
            "hub dataset read with spec.hfTokenSecretRef"
        )
    return url


def normalized_path(path: str) -> str:
    """The absolute path with '.', '..' and repeated '/' resolved, as the file system would."""
    return posixpath.normpath(path).replace("//", "/", 1)

DType = Literal["bfloat16", "float16", "float32"]
Attention = Literal["auto", "sdpa", "flash_attention_2", "eager"]
DatasetFormat = Literal["auto", "text", "instruction", "chat", "vision"]
# Parts of a vision-language model besides its language model that may be trained.
VisionPart = Literal["projector", "visionTower"]
MethodType = Literal["full", "lora", "qlora"]
QuantizationType = Literal["nf4", "fp4"]
Preset = Literal["default", "low-memory", "high-memory", "quick-test"]
Optimizer = Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd"]
Strategy = Literal["auto", "ddp", "fsdp"]
Kernels = Literal["auto", "liger", "none"]
LrScheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "cosine_with_min_lr",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "warmup_stable_decay",
    "reduce_lr_on_plateau",
]
EvalMetric = Literal["loss", "perplexity", "rouge"]
DEFAULT_EVAL_METRICS: tuple[EvalMetric, ...] = ("loss", "perplexity")


class ApiModel(BaseModel):
    """Base of every API object: strict (unknown fields are errors, and a value must have its field's JSON
    type: true/false or 4.0 is no integer, as the CRD's schema says too), camelCase on the wire."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it is written to the API server (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------------------- spec.model


# 100 trillion parameters: some 50 times the largest models trained so far, and finite in every estimate.
MAX_PARAMETERS = 10**14


class Architecture(ApiModel):
    """Model dimensions the estimator needs when the model is not in kubetune's catalog."""

    parameters: int | None = Field(default=None, ge=1, le=MAX_PARAMETERS)
    """Total parameter count. Computed from the dimensions when left out."""
    hidden_size: int = Field(ge=1, le=1 << 20)
    """Width of the residual stream (config.json `hidden_size`)."""
    num_layers: int = Field(ge=1, le=1024)
    """Number of transformer blocks (`num_hidden_layers`)."""
    num_attention_heads: int = Field(ge=1, le=4096)
    """Number of query heads."""
    num_key_value_heads: int | None = Field(default=None, ge=1, le=4096)
    """Number of key/value heads (grouped-query attention). Defaults to numAttentionHeads."""
    intermediate_size: int = Field(ge=1, le=1 << 22)
    """Width of the MLP (`intermediate_size`)."""
    vocab_size: int = Field(ge=1, le=1 << 24)
    """Vocabulary size; the logits are this wide."""
    tie_word_embeddings: bool = False
    """Whether the output projection shares the embedding matrix."""


class ModelSpec(ApiModel):
    """The base model to fine-tune: a Hugging Face hub id or a directory on a volume."""

    name: HubRepoId | None = None
    """Hugging Face hub id, e.g. `meta-llama/Llama-3.1-8B-Instruct`. Exactly one of name and path."""
    path: AbsolutePath | None = None
    """Directory with config.json and weights, on one of spec.volumes. Exactly one of name and path."""
    revision: GitRef = "main"
    """Hub revision: branch, tag or commit."""
    dtype: DType = "bfloat16"
    """Dtype of the weights that are not quantized, and of training."""
    trust_remote_code: bool = False
    """Allow the model's own Python code from the hub. Only for models you trust."""
    attention: Attention = "auto"
    """Attention implementation; auto picks flash_attention_2 when installed and supported, else sdpa."""
    architecture: Architecture | None = None
    """Dimensions for the GPU memory estimate when the model is not in the built-in catalog."""


# ------------------------------------------------------------------------------------- spec.dataset


class DatasetFields(ApiModel):
    """Which column holds what, when the dataset's columns are not named the usual way."""

    text: ShortText | None = None
    """Column with the whole training text (format text)."""
    prompt: ShortText | None = None
    """Column with the instruction or prompt (format instruction)."""
    input: ShortText | None = None
    """Optional column with extra input appended to the prompt (format instruction)."""
    response: ShortText | None = None
    """Column with the expected answer or summary (format instruction)."""
    messages: ShortText | None = None
    """Column with a list of {role, content} messages (format chat)."""
    system: ShortText | None = None
    """Optional column with a system prompt (formats instruction and chat)."""
    images: ShortText | None = None
    """Column with the image or list of images of a row (format vision): a path on a volume or inside the dataset
    directory, an http(s) URL, bytes, or an image feature. Defaults to `images` or `image`."""


class DatasetSpec(ApiModel):
    """The training data: a hub dataset, a file or directory on a volume, or an http(s) URL."""

    name: HubRepoId | None = None
    """Hugging Face hub dataset id. Exactly one of name, path and url."""
    path: AbsolutePath | None = None
    """A jsonl/json/csv/parquet file or a directory of them, on one of spec.volumes."""
    url: Annotated[
        str, BeforeValidator(_refuse_credentials), StringConstraints(pattern=HTTP_URL, max_length=LONG_TEXT)
    ] | None = None
    """An http(s) URL of a jsonl/json/csv/parquet file; no credentials in it (anyone who reads the spec sees them)."""
    config: ShortText | None = None
    """Hub dataset configuration (subset), e.g. `3.0.0` for cnn_dailymail."""
    revision: GitRef | None = None
    """Hub dataset revision (branch, tag or commit sha) to pin the data; the default branch when unset."""
    split: ShortText = "train"
    """Split to train on."""
    format: DatasetFormat = "auto"
    """How rows become training text; auto detects it from the columns (vision: an images or image column, with
    messages or prompt/response)."""
    fields: DatasetFields | None = None
    """Column mapping, when the columns are not named text, prompt/input/response or messages."""
    eval_split: ShortText | None = None
    """Split to evaluate on. Not together with evalFraction."""
    eval_fraction: float | None = Field(default=None, gt=0, le=0.5)
    """Fraction of the training split held out for evaluation (0 < f <= 0.5)."""
    max_samples: int | None = Field(default=None, ge=1, le=INT64_MAX)
    """Use at most this many training rows."""


# -------------------------------------------------------------------------------------- spec.method


class LoraSpec(ApiModel):
    """LoRA adapter settings (lora and qlora)."""

    rank: int = Field(default=16, ge=1, le=1024)
    """Adapter rank r."""
    alpha: float | None = Field(default=None, gt=0, le=65536)
    """Scaling numerator; defaults to 2 x rank."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter's input."""
    target_modules: list[ShortText] = Field(default_factory=lambda: ["all-linear"], min_length=1, max_length=64)
    """Modules that get adapters: `all-linear`, or explicit names such as q_proj, v_proj, lm_head."""
    use_rslora: bool = False
    """Rank-stabilised LoRA scaling (alpha / sqrt(r))."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""

    @property
    def effective_alpha(self) -> float:
        """alpha, or 2 x rank when it is not set."""
        return self.alpha if self.alpha is not None else 2.0 * self.rank


class QuantizationSpec(ApiModel):
    """bitsandbytes quantization of the frozen base weights (qlora only)."""

    bits: Literal[4, 8]
    """4 (NF4/FP4) or 8 (LLM.int8)."""
    type: QuantizationType | None = None
    """4-bit data type; defaults to nf4. Not for 8-bit."""
    double_quant: bool = True
    """Quantize the quantization constants too (4-bit only; saves about 0.4 bit per parameter)."""
    compute_dtype: DType | None = None
    """Dtype of the matmuls over dequantized weights; defaults to spec.model.dtype."""

    @property
    def effective_type(self) -> QuantizationType | None:
        """type, or nf4 for 4-bit when it is not set (8-bit has none)."""
        return self.type if self.type is not None else ("nf4" if self.bits == 4 else None)

    def effective_compute_dtype(self, model_dtype: DType) -> DType:
        """compute_dtype, or the model's dtype when it is not set."""
        return self.compute_dtype or model_dtype


class MethodSpec(ApiModel):
    """How the model is fine-tuned."""

    type: MethodType = "lora"
    """full: every weight is trained; lora: adapters on frozen weights; qlora: adapters on quantized weights."""
    lora: LoraSpec | None = None
    """Adapter settings for lora and qlora; defaults apply when left out."""
    quantization: QuantizationSpec | None = None
    """Required for qlora, and only for qlora."""

    @property
    def adapter(self) -> LoraSpec:
        """The LoRA settings in force (the defaults when the block is left out)."""
        return self.lora if self.lora is not None else LoraSpec()


# -------------------------------------------------------------------------------------- spec.vision

# 1024 x 1024 pixels: a page or photo at a legible resolution; about 1,340 image tokens for Qwen2.5-VL (28 x 28
# pixels per token), so the default keeps an image's share of the sequence and of memory predictable.
DEFAULT_MAX_PIXELS = 1024 * 1024
# 28 x 28: the smallest image the common processors accept (Qwen2-VL's patch 14 x merge 2).
MIN_PIXELS = 28 * 28
# 64 megapixels: above any processor's own limit; a larger bound would not bound memory.
MAX_PIXELS = 64 * 1024 * 1024
# 200:1, the longest side over the shortest: Qwen2-VL's processor refuses a longer strip, and no processor reads
# one usefully; the trainer refuses such an image when it loads the dataset, the estimator counts up to it.
MAX_ASPECT_RATIO = 200


class PageRendering(ApiModel):
    """Render a text column to page images (Pillow), so that a text dataset (summarization) becomes image-to-text."""

    field: ShortText
    """Column with the text to render, e.g. `article` for cnn_dailymail; it is shown as pages, not as text."""
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=LONG_TEXT)] = "Summarize the document."
    """The instruction that goes with the pages; the response column (fields.response) is the answer."""
    font: AbsolutePath | None = None
    """A TrueType/OpenType font file on a volume; Pillow's built-in font (DejaVu Sans where installed) otherwise."""
    font_size: int = Field(default=16, ge=6, le=96)
    """Font size in pixels."""
    page_width: int = Field(default=768, ge=128, le=4096)
    """Page width in pixels; lines wrap to it."""
    page_height: int = Field(default=1024, ge=128, le=4096)
    """Page height in pixels; text that does not fit goes on to the next page."""
    max_pages: int = Field(default=2, ge=1, le=32)
    """At most this many pages per row; the rest of the text is cut (the estimate counts this many images)."""


class VisionSpec(ApiModel):
    """Vision-language models (detected from the model's config): image bounds, trained parts, page rendering."""

    train: list[VisionPart] = Field(default_factory=list, max_length=2)
    """Parts trained besides the language model: projector, visionTower. Empty: the vision tower and the projector
    stay frozen (lora/qlora put adapters on the language model only; full trains the language model only)."""
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=MIN_PIXELS, le=MAX_PIXELS)
    """Largest image in pixels (width x height); larger images are scaled down, keeping their aspect ratio, so
    image tokens and memory per sample are bounded. The processor is configured with it."""
    max_images: int = Field(default=1, ge=1, le=64)
    """Most images in one row; a row with more is a dataset error. The memory estimate counts this many."""
    render: PageRendering | None = None
    """Render a text column to page images (turns format instruction data into vision data)."""

    @property
    def images_per_row(self) -> int:
        """The most images a row holds: render.maxPages pages, or maxImages."""
        return self.render.max_pages if self.render is not None else self.max_images


# ------------------------------------------------------------------------------------ spec.training


class TrainingSpec(ApiModel):
    """Training hyper-parameters. A field you leave out takes the preset's value, then the default."""

    preset: Preset = "default"
    """Fills the fields you leave out: default, low-memory, high-memory or quick-test."""
    epochs: float = Field(default=3.0, gt=0, le=1000)
    """Passes over the training data (ignored when maxSteps is set)."""
    max_steps: int | None = Field(default=None, ge=1, le=INT64_MAX)
    """Stop after this many optimizer steps."""
    batch_size: int = Field(default=4, ge=1, le=4096)
    """Sequences per GPU per forward pass."""
    gradient_accumulation_steps: int = Field(default=4, ge=1, le=4096)
    """Forward passes per optimizer step."""
    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    """Peak learning rate; defaults to 2e-4 for lora/qlora and 2e-5 for full."""
    lr_scheduler: LrScheduler = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    """Fraction of the steps spent warming up."""
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    """Decoupled weight decay."""
    max_grad_norm: float = Field(default=1.0, ge=0, le=1e6)
    """Gradient clipping norm; 0 turns clipping off."""
    max_seq_length: int = Field(default=2048, ge=16, le=262144)
    """Sequences are truncated (or packed) to this many tokens."""
    packing: bool = False
    """Pack several short examples into each sequence."""
    completion_only_loss: bool = True
    """Train only on the response tokens (instruction and chat data); the prompt is masked."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: much less memory, about 30% slower."""
    optimizer: Optimizer = "adamw_torch"
    """Optimizer; the 8-bit and paged ones save memory on GPUs."""
    kernels: Kernels = "auto"
    """Fused GPU kernels (Liger: RMSNorm, SwiGLU, RoPE): auto uses them where the architecture and GPU allow,
    liger requires them (the run fails if it cannot), none turns them off. No effect on CPUs."""
    strategy: Strategy = "auto"
    """Multi-GPU strategy; auto picks ddp when a replica fits a GPU, else fsdp."""
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Random seed for data order and initialisation."""
    logging_steps: int = Field(default=10, ge=1, le=INT64_MAX)
    """Log metrics every this many steps."""
    eval_steps: int | None = Field(default=None, ge=1, le=INT64_MAX)
    """Evaluate every this many steps (needs evaluation data); otherwise once at the end."""
    save_steps: int = Field(default=200, ge=1, le=INT64_MAX)
    """Save a resumable checkpoint every this many steps."""
    save_total_limit: int = Field(default=3, ge=1, le=1000)
    """Keep at most this many checkpoints."""
    on_out_of_memory: Literal["Adjust", "Fail"] = "Adjust"
    """After a CUDA out-of-memory: Adjust starts the next attempt from the last checkpoint with a smaller
    micro-batch and more gradient accumulation (same effective batch), then gradient checkpointing, then a
    GPU product with more memory (at most 3 adjustments; your spec is not edited, status.adjustments says
    what changed); Fail stops."""


# --------------------------------------------------------------------------------- spec.evaluation


class EvaluationSpec(ApiModel):
    """What is measured on the evaluation data after training."""

    metrics: list[EvalMetric] = Field(default_factory=lambda: list(DEFAULT_EVAL_METRICS), min_length=1, max_length=3)
    """loss, perplexity, rouge (ROUGE-1/2/L on generated responses; instruction and chat data)."""
    max_samples: int | None = Field(default=None, ge=1, le=INT64_MAX)
    """Evaluate on at most this many rows."""
    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    """Tokens generated per row for ROUGE."""


# ---------------------------------------------------------------------------------- spec.resources


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: LabelKey | None = None
    """Taint key; empty with operator Exists tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: LabelValue | None = None
    """Taint value, with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty tolerates all."""
    toleration_seconds: int | None = Field(default=None, ge=-INT64_MAX - 1, le=INT64_MAX)
    """For NoExecute: how long the pod stays bound after the taint appears."""


class NodeSelectorRequirement(ApiModel):
    """core/v1 NodeSelectorRequirement: the shape the planner evaluates against node labels."""

    key: ShortText
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: list[Annotated[str, StringConstraints(max_length=SHORT_TEXT)]] | None = Field(default=None, max_length=256)


class NodeSelectorTerm(ApiModel):
    """core/v1 NodeSelectorTerm (its requirements are ANDed)."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(default=None, max_length=64)
    match_fields: list[NodeSelectorRequirement] | None = Field(default=None, max_length=64)


class NodeSelector(ApiModel):
    """core/v1 NodeSelector (its terms are ORed)."""

    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=64)


class PreferredSchedulingTerm(ApiModel):
    """core/v1 PreferredSchedulingTerm."""

    weight: int = Field(ge=1, le=100)
    preference: NodeSelectorTerm


class NodeAffinity(ApiModel):
    """core/v1 NodeAffinity."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = Field(
        default=None, max_length=64)


class AffinityShape(ApiModel):
    """core/v1 Affinity as far as kubetune reads it: node affinity in full (the planner evaluates it, the
    Job builder merges into it); pod (anti-)affinity must be mappings, which the API server checks further."""

    node_affinity: NodeAffinity | None = None
    pod_affinity: dict[str, Any] | None = None
    pod_anti_affinity: dict[str, Any] | None = None


def _check_affinity(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        AffinityShape.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"is not a core/v1 Affinity: {where}: {first['msg'].lower()} "
                         f"({exc.error_count()} problem(s))") from None
    return value


class ResourcesSpec(ApiModel):
    """GPUs, CPU and memory per node, and where the pods may run."""

    gpus: int = Field(default=1, ge=0, le=16)
    """nvidia.com/gpu per node; 0 runs on CPU (tiny models only, one node)."""
    nodes: int = Field(default=1, ge=1, le=256)
    """Number of nodes (pods) that train together."""
    gpu_product: ShortText | None = None
    """Only GPUs whose nvidia.com/gpu.product label is this, e.g. NVIDIA-H100-80GB-HBM3."""
    min_gpu_memory_gib: float | None = Field(default=None, alias="minGpuMemoryGiB", gt=0, le=4096)
    """Only GPUs with at least this much memory, in GiB."""
    cpu: CpuQuantity | None = None
    """CPU request and limit per pod, e.g. 8."""
    memory: MemoryQuantity | None = None
    """Memory request and limit per pod, e.g. 64Gi."""
    shared_memory: MemoryQuantity | None = None
    """Size of the in-memory /dev/shm (data loader workers, NCCL); defaults to half the memory or 8Gi."""
    node_selector: dict[LabelKey, LabelValue] | None = Field(
        default=None, max_length=32
    )
    """Extra node labels the pods require."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    """Extra tolerations; the nvidia.com/gpu taint is tolerated already."""
    affinity: Annotated[dict[str, Any] | None, AfterValidator(_check_affinity)] = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Extra core/v1 Affinity, merged with the GPU node affinity kubetune computes."""


# ------------------------------------------------------------------------------------- spec.output


class VolumeRef(ApiModel):
    """A PersistentVolumeClaim for the outputs (checkpoints, adapter, summary)."""

    claim_name: DnsLabel
    """Name of the PersistentVolumeClaim in the job's namespace. Never deleted by kubetune."""
    sub_path: Annotated[str, StringConstraints(pattern=r"^[^/\x00][^\x00]*$", max_length=SHORT_TEXT)] | None = None
    """Directory inside the volume; defaults to the FineTuneJob's name."""


class PushToHub(ApiModel):
    """Upload the result to the Hugging Face hub when training succeeds."""

    repo: HubRepoId
    """Target repository, e.g. my-org/llama-3.1-8b-support."""
    private: bool = True
    """Create the repository as private."""


class OutputSpec(ApiModel):
    """Where the checkpoints and the result go."""

    volume: VolumeRef | None = None
    """PVC for checkpoints and results. Without it they live only as long as the pod (no resume)."""
    merge_adapter: bool = False
    """Also save the base model with the adapter merged in (lora and qlora)."""
    push_to_hub: PushToHub | None = None
    """Upload the adapter (or model) to the hub; needs spec.hfTokenSecretRef."""


class ExtraVolume(ApiModel):
    """A PersistentVolumeClaim mounted into the trainer, e.g. for model.path or dataset.path."""

    claim_name: DnsLabel
    """Name of the PersistentVolumeClaim in the job's namespace."""
    mount_path: AbsolutePath
    """Where it is mounted in the trainer container."""
    read_only: bool = True
    """Mount read-only (the default; models and datasets are only read)."""


class SecretKeyRef(ApiModel):
    """A key in a Secret of the job's namespace."""

    name: DnsLabel
    """Secret name."""
    key: ShortText = "token"
    """Key in the Secret whose value is the token."""


class KeyRef(ApiModel):
    """A key in a Secret or ConfigMap of the job's namespace."""

    name: DnsLabel
    """Secret or ConfigMap name."""
    key: ShortText
    """Key whose value becomes the variable's value."""
    optional: bool = False
    """true starts the pod even when the Secret/ConfigMap or the key does not exist."""


class EnvVarSource(ApiModel):
    """Where a variable's value comes from; set exactly one."""

    secret_key_ref: KeyRef | None = None
    """A key of a Secret (API keys such as WANDB_API_KEY)."""
    config_map_key_ref: KeyRef | None = None
    """A key of a ConfigMap (shared cluster settings such as NCCL_SOCKET_IFNAME)."""


class EnvVar(ApiModel):
    """An environment variable of the trainer container."""

    name: Annotated[str, StringConstraints(pattern=ENV_VAR_NAME, min_length=1, max_length=SHORT_TEXT)]
    """Variable name, e.g. NCCL_SOCKET_IFNAME, NCCL_IB_HCA, PYTORCH_CUDA_ALLOC_CONF."""
    value: Annotated[str, StringConstraints(max_length=LONG_TEXT)] | None = None
    """Literal value; leave it out when valueFrom is set."""
    value_from: EnvVarSource | None = None
    """Take the value from a Secret or ConfigMap key instead."""


# --------------------------------------------------------------------------------------------- spec


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on what, how, and with which resources."""

    model: ModelSpec
    """The base model."""
    dataset: DatasetSpec
    """The training data."""
    method: MethodSpec = Field(default_factory=MethodSpec)
    """full, lora or qlora, with their settings."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Hyper-parameters; a preset fills what you leave out."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Metrics computed on the evaluation data."""
    vision: VisionSpec | None = None
    """Vision-language fine-tuning: image bounds and trained parts; defaults apply to a vision model without it."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """GPUs, CPU, memory and placement constraints."""
    output: OutputSpec = Field(default_factory=OutputSpec)
    """Where results go."""
    volumes: list[ExtraVolume] = Field(default_factory=list, max_length=16)
    """Extra PVCs to mount (for model.path and dataset.path)."""
    hf_token_secret_ref: SecretKeyRef | None = None
    """Secret with a Hugging Face token (gated models, private datasets, pushToHub)."""
    image: Annotated[str, StringConstraints(pattern=r"^[^\s]+$", max_length=512)] | None = None
    """Trainer image; defaults to the operator's configured trainer image."""
    suspend: bool = False
    """true stops the running Job after a checkpoint; false starts a new attempt that resumes."""
    max_retries: int = Field(default=3, ge=0, le=100)
    """Pod failures retried (preemptions and disruptions are not counted)."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=INT64_MAX)
    """Fail the attempt after this many seconds of running."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=INT64_MAX)
    """Delete the FineTuneJob (and its Job, pods, ConfigMap; never the output PVC) this long after it ends."""
    queue_name: DnsLabel | None = None
    """Kueue LocalQueue; the Job is created suspended for Kueue to admit."""
    priority_class_name: DnsLabel | None = None
    """PriorityClass of the trainer pods."""
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Extra environment variables of the trainer container (NCCL settings, allocator settings, experiment
    trackers). Names kubetune sets itself are refused. May change after start: the next attempt uses it."""

    @property
    def vision_settings(self) -> VisionSpec:
        """The vision settings in force (the defaults when spec.vision is left out)."""
        return self.vision if self.vision is not None else VisionSpec()

    @property
    def has_image_data(self) -> bool:
        """Whether the training rows carry images: format vision, or text rendered to pages."""
        return self.dataset.format == "vision" or (self.vision is not None and self.vision.render is not None)


# Spec fields that may change while a Job exists; every other field defines the training and is
# frozen once it started (the CRD's transition rule and the operator both enforce this).
EDITABLE_AFTER_START = ("suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "env")
# Of spec.resources only what sizes the job is frozen; placement hints apply to the next attempt.
FROZEN_RESOURCES = ("gpus", "nodes", "gpuProduct")


def frozen_after_start(path: tuple[str, ...]) -> bool:
    """Whether a change at this path inside spec (wire names) is refused once a Job exists."""
    if not path or path[0] in EDITABLE_AFTER_START:
        return False
    if path[0] == "resources":
        return len(path) == 1 or path[1] in FROZEN_RESOURCES
    return True


# ------------------------------------------------------------------------------------------- status


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(StrEnum):
    VALIDATED = "Validated"
    SCHEDULABLE = "Schedulable"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    ADJUSTED = "Adjusted"


class Reason(StrEnum):
    """Reasons on conditions, events and status.failure."""

    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    UNKNOWN_MODEL = "UnknownModel"
    SPEC_FROZEN = "SpecFrozen"
    PLACED = "Placed"
    WAITING_FOR_GPUS = "WaitingForGPUs"
    WAITING_FOR_NODES = "WaitingForNodes"
    GPU_MEMORY_UNKNOWN = "GPUMemoryUnknown"
    INSUFFICIENT_GPU_MEMORY = "InsufficientGPUMemory"
    NOT_ENOUGH_GPUS_PER_NODE = "NotEnoughGPUsPerNode"
    NOT_ENOUGH_NODES = "NotEnoughNodes"
    NO_GPU_NODES = "NoGPUNodes"
    NO_MATCHING_GPU_PRODUCT = "NoMatchingGPUProduct"
    JOB_CREATED = "JobCreated"
    PODS_PENDING = "PodsPending"
    TRAINING = "Training"
    SUCCEEDED = "Succeeded"
    OUT_OF_MEMORY = "OutOfMemory"
    ADJUSTED = "AdjustedAfterOutOfMemory"
    OOM_KILLED = "OOMKilled"
    DATASET_ERROR = "DatasetError"
    MODEL_LOAD_ERROR = "ModelLoadError"
    CONFIG_ERROR = "ConfigError"
    INTERRUPTED = "Interrupted"
    IMAGE_PULL_ERROR = "ImagePullError"
    UNSCHEDULABLE = "Unschedulable"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    SUSPENDED_BY_USER = "SuspendedByUser"
    QUEUED_BY_KUEUE = "QueuedByKueue"
    EVICTED_BY_KUEUE = "EvictedByKueue"
    UNKNOWN = "Unknown"
    POLICY_DENIED = "PolicyDenied"  # the spec breaks the cluster's policy (policy.py)
    INTERNAL_ERROR = "InternalError"  # the operator failed to reconcile (a bug, or an API refusal); retried


def now_rfc3339() -> str:
    """The current time as status fields carry it (RFC 3339, UTC, whole seconds); both owners write it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusModel(ApiModel):
    """Status objects are written by two owners (operator, trainer): unknown keys are kept out, not errors."""

    model_config = ConfigDict(extra="ignore", strict=False)


class Condition(StatusModel):
    """A metav1.Condition."""

    type: ShortText
    """Validated, Schedulable, Running, Complete, Failed or Suspended."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: Annotated[str, StringConstraints(max_length=1024)]
    """CamelCase reason."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """A sentence for humans."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """metadata.generation the condition was set for."""


class EstimateStatus(StatusModel):
    """kubetune's GPU memory estimate."""

    per_gpu_gib: float = Field(alias="perGpuGiB")
    """Peak memory per GPU, in GiB."""
    total_gib: float = Field(alias="totalGiB")
    """Peak memory over all GPUs, in GiB."""
    strategy: Annotated[str, StringConstraints(max_length=16)] | None = None
    """ddp or fsdp (what `auto` resolved to), or single."""
    breakdown: dict[str, float] = Field(default_factory=dict)
    """Component -> GiB per GPU (weights, adapters, gradients, optimizer, activations, logits, overhead)."""
    trainable_parameters: int = 0
    """Parameters that receive gradients."""
    total_parameters: int = 0
    """All parameters of the model (and adapters)."""
    analytic_gib: float | None = Field(default=None, alias="analyticGiB")
    """The estimate from first principles, before calibration by measured runs (perGpuGiB is the one planned with)."""
    calibration_records: int = 0
    """Measured runs of the same shape that informed perGpuGiB (the operator's calibration store)."""
    calibration: Annotated[str, StringConstraints(max_length=512)] | None = None
    """What calibration did: raised, lowered or kept, and why."""


class PlacementStatus(StatusModel):
    """Where the planner placed the job."""

    nodes: list[str] = Field(default_factory=list)
    """Candidate nodes for the pods."""
    gpu_product: str | None = None
    """GPU product of the placement."""
    gpu_memory_gib: float | None = Field(default=None, alias="gpuMemoryGiB")
    """Memory of one GPU there, in GiB."""
    node_types: list[Annotated[str, StringConstraints(max_length=256)]] = Field(default_factory=list, max_length=16)
    """Node types the cluster is adding for the job (autoscale mode; the Job is pinned to them)."""


class ForecastStatus(StatusModel):
    """Time and cost forecast before the run, on the chosen GPU product (docs/planning.md)."""

    gpu_product: str
    """GPU product the forecast is for."""
    tokens_per_second: float
    """Expected training throughput over all GPUs."""
    tokens: int | None = None
    """Tokens the run trains on (maxSteps x tokens per step; an upper bound without packing); unset when unknown."""
    eta_seconds: int | None = None
    """Expected seconds of training; unset when the run's tokens are unknown."""
    gpu_hours: float | None = None
    """GPU-hours the run takes (ETA x GPUs)."""
    cost: float | None = None
    """GPU-hours x the chart's price per GPU-hour of the product, when it has one."""
    basis: Annotated[str, StringConstraints(max_length=256)] = ""
    """Where the efficiency comes from: measured runs (calibrated) or the default assumption."""


class TrainingStatus(StatusModel):
    """Progress, written by the trainer."""

    step: int = 0
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps planned."""
    epoch: float | None = None
    """Epochs done (fractional)."""
    progress: str | None = None
    """step / totalSteps, e.g. 42%."""
    loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest evaluation loss."""
    learning_rate: float | None = None
    """Current learning rate."""
    tokens_per_second: float | None = None
    """Training throughput over all GPUs."""
    peak_gpu_memory_gib: float | None = Field(default=None, alias="peakGpuMemoryGiB")
    """Peak reserved GPU memory on rank 0, in GiB."""
    eta_seconds: float | None = None
    """Estimated seconds to the end."""
    updated_at: str | None = None
    """When the trainer last wrote this (RFC 3339)."""


class CheckpointStatus(StatusModel):
    """The newest complete checkpoint, written by the trainer."""

    step: int
    """Step the checkpoint was taken at."""
    path: str
    """Its directory in the output volume."""
    time: str
    """When it was written (RFC 3339)."""


class OutputStatus(StatusModel):
    """Where the result is, written by the trainer when it finishes."""

    path: str | None = None
    """Directory of the adapter or model in the output volume."""
    hub_url: str | None = None
    """URL on the hub, when pushed."""


class FailureStatus(StatusModel):
    """Why the job failed."""

    reason: str
    """OutOfMemory, OOMKilled, DatasetError, ModelLoadError, ConfigError, ImagePullError, ..."""
    message: str = ""
    """What happened and what to do."""
    exit_code: int | None = None
    """Exit code of the trainer container, when it exited."""


class AdjustmentStatus(StatusModel):
    """A change the operator made for the next attempt after an out-of-memory (spec.training.onOutOfMemory)."""

    attempt: int = Field(ge=1)
    """The attempt that ran out of memory."""
    changes: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Merge patch of the effective spec (wire names), e.g. {"training": {"batchSize": 2, ...}}."""
    message: Annotated[str, StringConstraints(max_length=1024)] = ""
    """What happened and what changed."""


class FineTuneJobStatus(StatusModel):
    """Observed state. The operator owns everything but training, lastCheckpoint and output."""

    phase: Phase | None = None
    """Pending, Queued, Running, Succeeded, Failed or Suspended."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Validated, Schedulable, Running, Complete, Failed, Suspended."""
    message: str | None = None
    """The latest human-readable summary."""
    observed_generation: int | None = None
    """metadata.generation the operator last acted on."""
    estimate: EstimateStatus | None = None
    """GPU memory estimate."""
    placement: PlacementStatus | None = None
    """Nodes and GPUs chosen."""
    forecast: ForecastStatus | None = None
    """Expected throughput, ETA, GPU-hours and cost on the chosen GPU product."""
    job_name: str | None = None
    """The batch/v1 Job of the current attempt."""
    attempt: int = 0
    """Attempts started (1 for the first), one Job each (jobName); a resume after spec.suspend starts
    the next. Each new attempt resumes from the newest checkpoint; restarts inside one are in restarts."""
    restarts: int = 0
    """Times the current attempt's trainer was started again after its pod failed, at most
    spec.maxRetries (a multi-node gang's failure counts once); each restart resumes from the newest
    checkpoint. A pod replaced after a preemption or eviction is not counted (nor is it by maxRetries)."""
    start_time: str | None = None
    """When the first attempt started (RFC 3339)."""
    completion_time: str | None = None
    """When the job succeeded or failed (RFC 3339)."""
    training: TrainingStatus | None = None
    """Training progress (written by the trainer)."""
    last_checkpoint: CheckpointStatus | None = None
    """The newest checkpoint (written by the trainer)."""
    output: OutputStatus | None = None
    """Where the result is (written by the trainer)."""
    failure: FailureStatus | None = None
    """Why it failed."""
    adjustments: list[AdjustmentStatus] = Field(default_factory=list, max_length=8)
    """Changes made after out-of-memory failures, oldest first; each attempt after them runs with all of them."""


class ObjectMeta(BaseModel):
    """The part of metadata a manifest file carries; the rest is the API server's."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, StringConstraints(pattern=DNS_LABEL, min_length=1, max_length=MAX_NAME_LENGTH)]
    namespace: DnsLabel | None = None
    labels: dict[LabelKey, LabelValue] | None = Field(default=None, max_length=64)
    annotations: dict[str, str] | None = None


class FineTuneJob(BaseModel):
    """A FineTuneJob manifest as written in a file or read from the API server."""

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
