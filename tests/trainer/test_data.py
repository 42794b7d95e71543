"""Data loading and shaping: formats are detected, rows become TRL rows, bad data names file, row, field."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import DatasetFields
from kubetune_trainer import data, tiny
from kubetune_trainer.errors import DatasetError

from .conftest import MOUNT, SpecFactory


@pytest.mark.parametrize(
    ("columns", "fields", "expected"),
    [
        (["messages"], None, "chat"),
        (["prompt", "response"], None, "instruction"),
        (["instruction", "input", "output"], None, "instruction"),
        (["text", "id"], None, "text"),
        (["article", "highlights"], DatasetFields(prompt="article", response="highlights"), "instruction"),
        (["body"], None, None),
    ],
    ids=[
        "a messages column is chat",
        "prompt and response columns are instruction data",
        "alpaca's instruction/input/output columns are instruction data",
        "a text column is plain text",
        "mapped fields make summarization data instruction data",
        "unknown columns are no format",
    ],
)
def test_format_is_detected_from_the_columns(columns: list[str], fields: DatasetFields | None,
                                             expected: str | None) -> None:
    assert data.detect_format(columns, fields) == expected


@pytest.mark.parametrize(
    ("row", "columns", "expected"),
    [
        ({"text": "hello"}, data.Columns("text", {"text": "text"}), {"text": "hello"}),
        ({"prompt": "Sum up", "input": "a b", "response": "ab"},
         data.Columns("instruction", {"prompt": "prompt", "input": "input", "response": "response"}),
         {"prompt": "Sum up\n\na b\n\n", "completion": "ab"}),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "sys": "Be kind"},
         data.Columns("chat", {"messages": "messages", "system": "sys"}),
         {"prompt": [{"role": "system", "content": "Be kind"}, {"role": "user", "content": "hi"}],
          "completion": [{"role": "assistant", "content": "yo"}]}),
    ],
    ids=[
        "text rows stay text",
        "instruction rows join prompt and input, the response is the completion",
        "chat rows: the system column leads, the last assistant message is the completion",
    ],
)
def test_rows_become_trl_rows(row: dict[str, Any], columns: data.Columns, expected: dict[str, Any]) -> None:
    assert data.to_training_row(row, columns, "f.jsonl: row 1") == expected


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


BAD_DATA = [
    ("missing.jsonl", None, {}, "missing.jsonl does not exist"),
    ("empty.jsonl", "", {}, "the dataset is empty"),
    ("list_row.jsonl", '{"text": "a"}\n["not", "a", "mapping"]\n', {}, "row 2 is a list, not a mapping"),
    ("broken.jsonl", '{"text": "a"}\n{"text": \n', {}, "row 2 is not valid JSON"),
    ("no_response.jsonl", '{"prompt": "a", "answer_text": "b"}\n', {"format": "instruction"},
     "has no column 'response' or 'output' or 'completion' or 'answer' for the response"),
    ("unknown.jsonl", '{"body": "a"}\n', {}, "cannot tell the format from the columns ['body']"),
    ("empty_field.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "", "response": "c"}\n', {},
     "row 2: field 'prompt' is empty"),
    ("bad_message.jsonl", '{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}\n', {},
     "row 1: messages[1] must be a mapping with role"),
    ("no_answer.jsonl", '{"messages": [{"role": "user", "content": "a"}]}\n', {},
     "row 1: the last message must be the assistant's answer"),
    ("table.txt", "a,b\n", {}, "is not a .jsonl/.json/.csv/.parquet file"),
    ("latin1.jsonl", '{"text": "a"}\n{"text": "caf\xe9"}\n'.encode("latin-1"), {},
     "line 2 is not UTF-8 text (byte 27"),
    ("latin1.csv", "text\na\ncaf\xe9\n".encode("latin-1"), {}, "line 3 is not UTF-8 text"),
    ("ragged.csv", "prompt,response\na,b\nc,d,e\n", {}, "row 2 (line 3) has 3 fields; the header has 2"),
    ("missing_field.jsonl", '{"prompt": "a", "response": "b"}\n{"response": "c"}\n', {},
     "row 2: field 'prompt' is missing (absent or null)"),
    ("not_parquet.parquet", "text\na\n", {}, "not a readable parquet file"),
]


@pytest.mark.parametrize(
    ("name", "content", "dataset", "message"),
    BAD_DATA,
    ids=[
        "a missing file says it does not exist",
        "an empty file says the dataset is empty",
        "a row that is a list names the row",
        "a row that is not JSON names the row",
        "a missing response column names the columns looked for",
        "columns of no known format say so",
        "an empty prompt names the row and field",
        "a message with an unknown role names the row and message",
        "a chat without an assistant answer names the row",
        "an unsupported file type names the types read",
        "bytes that are not UTF-8 in a jsonl name the line and byte",
        "bytes that are not UTF-8 in a csv name the line",
        "a ragged csv row names the row, its line and the header's width",
        "an absent field says missing, not empty",
        "a file that is no parquet says so",
    ],
)
def test_bad_data_names_file_row_and_field(make_spec: SpecFactory, tmp_path: Path, *, name: str,
                                           content: str | bytes | None, dataset: dict[str, Any],
                                           message: str) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is not None:
        _write(bad / name, content)
    spec = make_spec({"dataset": {"path": f"{MOUNT}/{name}", **dataset}})
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"path": str(bad / name)})})

    with pytest.raises(DatasetError) as raised:
        data.load_training_data(spec, None)

    assert message in raised.value.message
    assert name in raised.value.message


def test_an_empty_parquet_file_is_named(make_spec: SpecFactory, tmp_path: Path) -> None:
    import pyarrow
    import pyarrow.parquet

    empty = tmp_path / "empty.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"text": pyarrow.array([], type=pyarrow.string())}), empty)
    spec = make_spec()
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"path": str(empty)})})

    with pytest.raises(DatasetError, match=r"empty.parquet: the parquet file holds no rows"):
        data.load_training_data(spec, None)


def test_an_http_error_is_a_dataset_error(make_spec: SpecFactory, served_dir: str) -> None:
    spec = make_spec({"dataset": {"path": None, "url": f"{served_dir}/absent.jsonl"}})

    with pytest.raises(DatasetError, match=r"spec.dataset.url: http://127.0.0.1:\d+/absent.jsonl: cannot fetch"):
        data.load_training_data(spec, None)


def test_eval_fraction_and_max_samples_split_the_rows(make_spec: SpecFactory) -> None:
    spec = make_spec({"dataset": {"evalFraction": 0.25, "maxSamples": 100}, "evaluation": {"maxSamples": 10}})
    train_rows, eval_rows = data.load_training_data(spec, None)

    assert len(train_rows) == 75
    assert eval_rows is not None and len(eval_rows) == 10
    assert set(train_rows.column_names) == {"prompt", "completion"}


def test_a_directory_of_files_is_one_dataset(make_spec: SpecFactory, tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    tiny.write_jsonl(folder / "a.jsonl", tiny.text_rows(5, seed=1))
    tiny.write_jsonl(folder / "b.jsonl", tiny.text_rows(7, seed=2))
    spec = make_spec()
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"path": str(folder)})})

    train_rows, _ = data.load_training_data(spec, None)

    assert len(train_rows) == 12 and train_rows.column_names == ["text"]


@pytest.fixture
def served_dir(data_root: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(data_root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_an_http_url_is_downloaded(make_spec: SpecFactory, served_dir: str) -> None:
    spec = make_spec({"dataset": {"path": None, "url": f"{served_dir}/chat.jsonl"}})

    train_rows, _ = data.load_training_data(spec, None)

    assert len(train_rows) == 200
    assert train_rows[0]["completion"][0]["role"] == "assistant"
