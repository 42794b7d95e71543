"""Reading FineTuneJob manifests from files for the CLI: YAML errors and bad documents become
`FILE: path: message` lines, never tracebacks."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubetune.api import FineTuneJob
from kubetune.validation import validate_manifest


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


def read_text(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{source}: cannot read: {exc.strerror or exc}") from None


def parse_documents(source: str, text: str) -> list[Document]:
    """The non-empty documents of a (multi-document) YAML text."""
    try:
        contents = [c for c in yaml.safe_load_all(text) if c is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CliError(f"{source}: not valid YAML{where}: {problem}") from None
    if not contents:
        raise CliError(f"{source}: holds no YAML document")
    return [Document(source, index, content) for index, content in enumerate(contents)]


def load_documents(sources: list[str]) -> list[Document]:
    return [doc for source in sources for doc in parse_documents(source, read_text(source))]


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

