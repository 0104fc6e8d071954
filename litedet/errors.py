"""The error contract for input a user gives litedet (files, options, sidecars).

A problem with the user's input raises :class:`UserError`, whose message is ONE line that names the
file (and the line, for label files and YAML) and says what is wrong and, where it helps, what to
do. It subclasses ``ValueError``, so the CLI prints it as ``litedet VERB: error: MESSAGE`` and
exits with status 2, without a traceback (``LITEDET_DEBUG=1`` shows one).

Parsers of user files (dataset YAML, labels, sidecars, ncnn .param) raise nothing else for bad
content; ``tests/test_fuzz.py`` holds them to it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

__all__ = ["UserError", "load_yaml", "one_line"]


class UserError(ValueError):
    """Bad user input, described in one line that names the file (and line)."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str, limit: int = 400) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed, cut at ``limit`` chars."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def load_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    """``yaml.safe_load`` of a file, with a syntax error or a tag that would build a Python object
    (``!!python/...``) reported as one :class:`UserError` line ``PATH:LINE: ...``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a {what} (not UTF-8 text: {err.reason} at byte {err.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(_describe_yaml_error(path, err, what)) from None


def _describe_yaml_error(path: Path, err: Any, what: str) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err)
    tag = re.search(r"constructor for the tag '([^']*)'", problem)
    if tag:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return f"{where}: the tag {name!r} is not allowed in this {what} (plain YAML values only, no Python objects)"
    context = getattr(err, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return f"{where}: not valid YAML ({detail})"
