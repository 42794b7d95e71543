"""Training data: load it from the hub, a file, a directory or a URL, check it, and shape it for TRL.

Rows become TRL's dataset types: `{"text"}` (language modelling), `{"prompt", "completion"}` as
strings (instruction data) or as message lists (chat data). TRL tokenizes them, applies the chat
template, masks the prompt for completion-only loss and packs. Bad data raises DatasetError naming
the source, the row and the field.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api import DatasetFields, FineTuneJobSpec, VisionSpec, redact_url
from kubetune_trainer import images, pages
from kubetune_trainer.errors import DatasetError

# File suffix -> the `datasets` builder that reads it.
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

# Column names looked for when spec.dataset.fields does not name one, in order of preference.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt": ("prompt", "instruction", "question"),
    "input": ("input", "context"),
    "response": ("response", "output", "completion", "answer"),
    "messages": ("messages", "conversations"),
    "system": ("system",),
    "images": ("images", "image"),
}
REQUIRED_FIELDS = {"text": ("text",), "instruction": ("prompt", "response"), "chat": ("messages",)}
# Vision rows: images with chat messages, or images with a prompt and a response; the first that is there.
VISION_TEXT_FIELDS = (("messages",), ("prompt", "response"))
ROLES = ("system", "user", "assistant", "tool")
HELD_OUT_SEED_OFFSET = 1  # the eval split is drawn with seed + 1, apart from the shuffling of training data
# Appended to a hub dataset's load error: a private repo without a token reads as a missing one.
HUB_HINT = "check the id, spec.dataset.revision and that HF_TOKEN can read it"


@dataclass(frozen=True)
class Columns:
    """The dataset's format and which column holds each field it reads."""

    format: str
    names: dict[str, str]
    # Vision rows: the settings that bound their images, the directory relative image paths start from, and a
    # local run's --mount directories (absolute image paths under a mountPath read from there).
    vision: VisionSpec | None = None
    image_base: Path | None = None
    mounts: Mapping[str, Path] | None = None


def _configured(fields: DatasetFields | None, field: str) -> str | None:
    return getattr(fields, field) if fields is not None else None


def _find_column(field: str, columns: list[str], fields: DatasetFields | None) -> str | None:
    configured = _configured(fields, field)
    if configured is not None:
        return configured if configured in columns else None
    return next((name for name in DEFAULT_COLUMNS[field] if name in columns), None)


def _vision_text_fields(columns: list[str], fields: DatasetFields | None) -> tuple[str, ...] | None:
    return next((needed for needed in VISION_TEXT_FIELDS
                 if all(_find_column(field, columns, fields) for field in needed)), None)


def detect_format(columns: list[str], fields: DatasetFields | None) -> str | None:
    """vision, chat, instruction or text: the first whose required columns are all there."""
    if _find_column("images", columns, fields) and _vision_text_fields(columns, fields):
        return "vision"
    for data_format in ("chat", "instruction", "text"):
        if all(_find_column(field, columns, fields) for field in REQUIRED_FIELDS[data_format]):
            return data_format
    return None


def resolve_columns(data_format: str, columns: list[str], fields: DatasetFields | None, source: str) -> Columns:
    """The columns for each field of the format, or DatasetError naming the missing one."""
    if data_format == "auto":
        detected = detect_format(columns, fields)
        if detected is None:
            raise DatasetError(
                f"{source}: cannot tell the format from the columns {columns}: expected 'text', "
                "'prompt' and 'response', or 'messages'; set spec.dataset.format and spec.dataset.fields"
            )
        data_format = detected
    names = {}
    if data_format == "vision":
        required = ("images", *(_vision_text_fields(columns, fields) or ("prompt", "response")))
    else:
        required = REQUIRED_FIELDS[data_format]
    for field in required:
        column = _find_column(field, columns, fields)
        if column is None:
            wanted = _configured(fields, field) or " or ".join(repr(c) for c in DEFAULT_COLUMNS[field])
            raise DatasetError(
                f"{source}: has no column {wanted} for the {field} of format {data_format} "
                f"(columns: {columns}); set spec.dataset.fields.{field}"
            )
        names[field] = column
    for field in ("input", "system") if data_format != "text" else ():
        column = _find_column(field, columns, fields)
        if column is not None:
            names[field] = column
    return Columns(data_format, names)


def _text(row: Mapping[str, Any], columns: Columns, field: str, where: str, required: bool = True) -> str:
    column = columns.names.get(field)
    value = row.get(column) if column is not None else None
    if value is None or value == "":
        if required:
            state = "missing (absent or null)" if value is None else "empty"
            raise DatasetError(f"{where}: field {column!r} is {state}; every row needs its {field}")
        return ""
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {column!r} must be text, not {type(value).__name__}")
    return value


def _messages(row: Mapping[str, Any], columns: Columns, where: str) -> list[dict[str, str]]:
    column = columns.names["messages"]
    messages = row.get(column)
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: field {column!r} must be a non-empty list of {{role, content}} messages")
    checked = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if role not in ROLES or not isinstance(content, str):
            raise DatasetError(
                f"{where}: {column}[{index}] must be a mapping with role (one of {', '.join(ROLES)}) "
                f"and content (text); got {message!r:.80}"
            )
        checked.append({"role": role, "content": content})
    system = _text(row, columns, "system", where, required=False)
    return [{"role": "system", "content": system}, *checked] if system else checked


def _vision_row(row: Mapping[str, Any], columns: Columns, where: str) -> dict[str, Any]:
    """{"images", "prompt", "completion"} with message lists: TRL puts the image placeholders into the first user
    message and masks the prompt and image tokens."""
    settings = columns.vision or VisionSpec()
    if columns.format == "rendered" and settings.render is not None:
        pages_of_row = pages.render(_text(row, columns, "rendered", where), settings.render)
        row_images = [images.bounded(page, settings.max_pixels) for page in pages_of_row]
        prompt = [{"role": "user", "content": settings.render.prompt}]
        return {"images": row_images, "prompt": prompt,
                "completion": [{"role": "assistant", "content": _text(row, columns, "response", where)}]}
    row_images = images.row_images(row.get(columns.names["images"]), columns.image_base, settings.max_pixels,
                                   settings.max_images, where, mounts=columns.mounts)
    if "messages" in columns.names:
        messages = _messages(row, columns, where)
        if messages[-1]["role"] != "assistant":
            raise DatasetError(f"{where}: the last message must be the assistant's answer (role assistant)")
        return {"images": row_images, "prompt": messages[:-1], "completion": messages[-1:]}
    parts = [_text(row, columns, "prompt", where), _text(row, columns, "input", where, required=False)]
    prompt = [{"role": "user", "content": "\n\n".join(part for part in parts if part)}]
    system = _text(row, columns, "system", where, required=False)
    if system:
        prompt.insert(0, {"role": "system", "content": system})
    return {"images": row_images, "prompt": prompt,
            "completion": [{"role": "assistant", "content": _text(row, columns, "response", where)}]}


def to_training_row(row: Mapping[str, Any], columns: Columns, where: str) -> dict[str, Any]:
    """One row in TRL's form: {"text"}, {"prompt", "completion"} (strings or message lists), or for vision rows
    {"images", "prompt", "completion"}."""
    if columns.format in ("vision", "rendered"):
        return _vision_row(row, columns, where)
    if columns.format == "text":
        return {"text": _text(row, columns, "text", where)}
    if columns.format == "instruction":
        parts = [
            _text(row, columns, "system", where, required=False),
            _text(row, columns, "prompt", where),
            _text(row, columns, "input", where, required=False),
        ]
        prompt = "\n\n".join(part for part in parts if part) + "\n\n"
        return {"prompt": prompt, "completion": _text(row, columns, "response", where)}
    messages = _messages(row, columns, where)
    if messages[-1]["role"] != "assistant":
        raise DatasetError(f"{where}: the last message must be the assistant's answer (role assistant)")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


# ---------------------------------------------------------------------------------------- loading


def data_files(path: Path) -> tuple[str, list[str]]:
    """The builder and the files of a local file or directory, or DatasetError."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in BUILDERS and p.is_file())
        builders = {BUILDERS[p.suffix] for p in files}
        if not files:
            raise DatasetError(f"spec.dataset.path: {path} holds no {'/'.join(BUILDERS)} file")
        if len(builders) > 1:
            raise DatasetError(f"spec.dataset.path: {path} mixes file types {sorted(builders)}; keep one type")
        return builders.pop(), [str(p) for p in files]
    if not path.exists():
        raise DatasetError(f"spec.dataset.path: {path} does not exist; check the path and spec.volumes")
    if path.suffix not in BUILDERS:
        raise DatasetError(f"spec.dataset.path: {path} is not a {'/'.join(BUILDERS)} file")
    return BUILDERS[path.suffix], [str(path)]


def decoded(path: Path) -> str:
    """The file as UTF-8 text, or DatasetError naming the line and byte that are not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{path}: line {line} is not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.end]!r}); "
                           "save the file as UTF-8") from None


def check_csv(path: Path, text: str) -> None:
    """Every row has as many fields as the header (pandas would name a line only for some, and fill others)."""
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    if not header:
        raise DatasetError(f"{path}: has no header row; the first line must name the columns")
    for number, row in enumerate(rows, start=1):
        if row and len(row) != len(header):
            raise DatasetError(f"{path}: row {number} (line {rows.line_num}) has {len(row)} fields; the header has "
                               f"{len(header)} ({', '.join(header)[:200]})")


def check_parquet(path: Path) -> None:
    """The parquet file can be read and holds rows."""
    import pyarrow
    import pyarrow.parquet

    try:
        rows = pyarrow.parquet.ParquetFile(path).metadata.num_rows
    except (OSError, pyarrow.ArrowException) as exc:
        raise DatasetError(f"{path}: not a readable parquet file: {exc}") from None
    if rows == 0:
        raise DatasetError(f"{path}: the parquet file holds no rows; it needs at least one")


def check_local_file(path: Path) -> None:
    """The file has rows, is UTF-8 (text formats) and, for json/jsonl, every row is a mapping; for csv, every
    row has the header's fields (the builders' own errors name no file or row)."""
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: the file is empty, so the dataset is empty; it needs at least one row")
    if path.suffix == ".parquet":
        check_parquet(path)
        return
    text = decoded(path)
    if path.suffix == ".csv":
        check_csv(path, text)
        return
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
        numbered = list(enumerate(rows, start=1))
    elif path.suffix == ".jsonl":
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: row {number} is not valid JSON: {exc.msg}") from None
    else:
        return
    for number, row in numbered:
        if not isinstance(row, Mapping):
            raise DatasetError(f"{path}: row {number} is a {type(row).__name__}, not a mapping of field -> value")


def _url_builder(url: str) -> str:
    suffix = Path(url.split("?", 1)[0]).suffix
    if suffix not in BUILDERS:
        raise DatasetError(f"spec.dataset.url: {redact_url(url)} does not end in {'/'.join(BUILDERS)}; "
                           "point it at such a file")
    return BUILDERS[suffix]


def load_url(url: str, split: str) -> Any:
    """The file at an http(s) URL as a dataset, or DatasetError: whatever fails in fetching it (refused
    connection, an HTTP error, a timeout, a body that is not the format) is the data's fault, not a bug."""
    import datasets

    builder = _url_builder(url)
    try:
        return datasets.load_dataset(builder, data_files={"train": url}, split=split)
    except Exception as exc:  # fsspec, aiohttp and the builders raise many types; none is a kubetune bug
        message = str(exc).replace(url, redact_url(url))
        raise DatasetError(f"spec.dataset.url: {redact_url(url)}: cannot fetch or read it ({type(exc).__name__}: "
                           f"{message[:300]}); check the URL is reachable from the pod") from None


def load_split(spec: FineTuneJobSpec, split: str, token: str | None) -> tuple[Any, str]:
    """One split of the dataset as a `datasets.Dataset`, and a name for it in messages."""
    import datasets

    source = spec.dataset
    try:
        if source.path is not None:
            builder, files = data_files(Path(source.path))
            for file in files:
                check_local_file(Path(file))
            name = source.path
            loaded = datasets.load_dataset(builder, data_files={"train": files}, split=split)
        elif source.url is not None:
            name = redact_url(source.url)
            loaded = load_url(source.url, split)
        else:
            name = str(source.name)
            loaded = datasets.load_dataset(name, source.config, split=split, token=token, revision=source.revision)
    except DatasetError:
        raise
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        field, value = next((f, v) for f, v in (("path", source.path), ("name", source.name)) if v)
        hint = f"; {HUB_HINT}" if field == "name" else ""
        raise DatasetError(f"spec.dataset.{field}: {value}: cannot load split {split!r}: {exc}{hint}") from None
    return loaded, name


def rendered_columns(spec: FineTuneJobSpec, columns: list[str], source: str) -> Columns:
    """The columns of rows whose text spec.vision.render draws as pages: that text and the response."""
    render = spec.vision_settings.render
    assert render is not None
    if render.field not in columns:
        raise DatasetError(f"{source}: has no column {render.field!r} to render (columns: {columns}); "
                           "set spec.vision.render.field")
    response = _find_column("response", columns, spec.dataset.fields)
    if response is None:
        wanted = _configured(spec.dataset.fields, "response") or " or ".join(map(repr, DEFAULT_COLUMNS["response"]))
        raise DatasetError(f"{source}: has no column {wanted} for the response to the rendered pages "
                           f"(columns: {columns}); set spec.dataset.fields.response")
    return Columns("rendered", {"rendered": render.field, "response": response})


def image_base(spec: FineTuneJobSpec) -> Path | None:
    """Where relative image paths start: the dataset's directory (or the directory of its file)."""
    if spec.dataset.path is None:
        return None
    path = Path(spec.dataset.path)
    return path if path.is_dir() else path.parent


def dataset_columns(spec: FineTuneJobSpec, columns: list[str], source: str,
                    local_mounts: Mapping[str, Path] | None = None) -> Columns:
    """The format and columns of the dataset, with the image settings of vision rows."""
    if spec.vision_settings.render is not None:
        found = rendered_columns(spec, columns, source)
    else:
        found = resolve_columns(spec.dataset.format, columns, spec.dataset.fields, source)
    if found.format in ("vision", "rendered"):
        return Columns(found.format, found.names, spec.vision_settings, image_base(spec), dict(local_mounts or {}))
    return found


def shape(dataset: Any, name: str, spec: FineTuneJobSpec, local_mounts: Mapping[str, Path] | None = None) -> Any:
    """Check every row and convert it to TRL's form; DatasetError names the first bad row."""
    if len(dataset) == 0:
        raise DatasetError(f"{name}: the dataset is empty; it needs at least one row")
    columns = dataset_columns(spec, list(dataset.column_names), name, local_mounts)

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        return to_training_row(row, columns, f"{name}: row {index + 1}")

    shaped = dataset.map(convert, with_indices=True, remove_columns=list(dataset.column_names))
    if columns.vision is not None:  # datasets stores the PIL images as encoded structs; read them back as images
        import datasets

        shaped = shaped.cast_column("images", datasets.List(datasets.Image()))
    return shaped


def _first(dataset: Any, limit: int | None) -> Any:
    return dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset


def load_training_data(spec: FineTuneJobSpec, token: str | None,
                       local_mounts: Mapping[str, Path] | None = None) -> tuple[Any, Any | None]:
    """(train, eval or None) in TRL's form, with maxSamples, evalSplit or evalFraction applied; a local run's
    --mount directories map absolute image paths in the rows."""
    train, name = load_split(spec, spec.dataset.split, token)
    train = shape(_first(train, spec.dataset.max_samples), name, spec, local_mounts)
    evaluation = None
    if spec.dataset.eval_fraction is not None:
        if len(train) < 2:
            raise DatasetError(f"{name}: too few rows ({len(train)}) to hold out spec.dataset.evalFraction")
        seed = spec.training.seed + HELD_OUT_SEED_OFFSET
        parts = train.train_test_split(test_size=spec.dataset.eval_fraction, seed=seed)
        train, evaluation = parts["train"], parts["test"]
    elif spec.dataset.eval_split is not None:
        held_out, eval_name = load_split(spec, spec.dataset.eval_split, token)
        evaluation = shape(held_out, f"{eval_name} ({spec.dataset.eval_split})", spec, local_mounts)
    if evaluation is not None:
        evaluation = _first(evaluation, spec.evaluation.max_samples)
    return train, evaluation
