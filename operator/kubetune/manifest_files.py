"""Reading FineTuneJob manifests from files for the CLI: YAML errors and bad documents become
`FILE: path: message` lines, never tracebacks.

Input is hostile until read: a file is read up to a size bound and must be UTF-8; the YAML loader
refuses aliases (no alias bomb can expand), duplicate keys (as kubectl's strict field validation
does) and nesting deeper than a bound, so reading any file takes bounded time and memory.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubetune.api import FineTuneJob
from kubetune.validation import validate_manifest

# The API server refuses requests over 3 MiB and etcd objects over 1.5 MiB: a manifest is far smaller.
MAX_MANIFEST_BYTES = 3 * 2**20
# `kubectl get nodes/pods -A -o yaml` of a few thousand nodes and pods stays well under this.
MAX_CLUSTER_FILE_BYTES = 256 * 2**20
# A FineTuneJob nests about 10 levels deep (spec.resources.affinity...values[0]); Node and Pod
# objects about 12. Far below Python's recursion limit, which PyYAML's composer would hit first.
MAX_YAML_DEPTH = 64


class CliError(Exception):
    """An error the user can fix; the CLI prints it and exits with exit_code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Document:
    """One YAML document of a file: where it came from and what it holds."""

    source: str
    index: int
    content: Any

    @property
    def label(self) -> str:
        return self.source if self.index == 0 else f"{self.source}#{self.index + 1}"


def read_bytes(source: str, max_bytes: int) -> bytes:
    """At most max_bytes of a file (or stdin for -), or CliError when it cannot be read or is larger."""
    try:
        if source == "-":
            data = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with Path(source).open("rb") as stream:
                data = stream.read(max_bytes + 1)
    except OSError as exc:
        raise CliError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise CliError(f"{source}: larger than {max_bytes // 2**20} MiB; this is not a manifest kubetune reads")
    return data


def decode_text(source: str, data: bytes) -> str:
    """The bytes as UTF-8 text, or CliError naming the first bad byte (binary files end here)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{source}: not UTF-8 text (byte {exc.start}); give a YAML or JSON manifest") from None
    if "\x00" in text:
        raise CliError(f"{source}: holds a NUL byte; this is a binary file, not a YAML or JSON manifest")
    return text


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses aliases, duplicate keys and nesting deeper than MAX_YAML_DEPTH."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted; write the value out",
                                              mark)
        if self.depth >= MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:60]!r}; keep one", key_node.start_mark)
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_documents(source: str, text: str) -> list[Document]:
    """The non-empty documents of a (multi-document) YAML text."""
    try:
        contents = [c for c in yaml.load_all(text, Loader=StrictLoader) if c is not None]  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CliError(f"{source}: not valid YAML{where}: {problem}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more digits than Python converts
        raise CliError(f"{source}: not a usable YAML value: {str(exc)[:200]}") from None
    if not contents:
        raise CliError(f"{source}: holds no YAML document")
    return [Document(source, index, content) for index, content in enumerate(contents)]


def load_documents(sources: list[str], max_bytes: int = MAX_MANIFEST_BYTES) -> list[Document]:
    """The documents of each file, each file read with the bounds above."""
    return [doc for source in sources for doc in parse_documents(source, decode_text(source, read_bytes(source,
                                                                                                       max_bytes)))]


def load_single_document(source: str, max_bytes: int = MAX_MANIFEST_BYTES) -> Any:
    """The one YAML or JSON document of a file, read with the bounds above, or CliError."""
    documents = load_documents([source], max_bytes)
    if len(documents) != 1:
        raise CliError(f"{source}: holds {len(documents)} YAML documents; give a file with one")
    return documents[0].content


def check_documents(documents: list[Document]) -> tuple[list[tuple[Document, FineTuneJob]], list[str]]:
    """The valid FineTuneJobs, and one `LABEL: path: message` line per problem."""
    jobs: list[tuple[Document, FineTuneJob]] = []
    lines: list[str] = []
    for document in documents:
        job, problems = validate_manifest(document.content)
        if job is not None:
            jobs.append((document, job))
        lines.extend(f"{document.label}: {problem}" for problem in problems)
    return jobs, lines


def load_job(source: str) -> FineTuneJob:
    """The single valid FineTuneJob in a file, or CliError listing every problem."""
    documents = load_documents([source])
    jobs, lines = check_documents(documents)
    if lines:
        raise CliError("invalid FineTuneJob:\n  " + "\n  ".join(lines))
    if len(jobs) != 1:
        raise CliError(f"{source}: holds {len(jobs)} FineTuneJobs; give a file with exactly one")
    return jobs[0][1]

