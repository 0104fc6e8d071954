"""Options every `litedet` verb shares, defined once so the verbs behave alike.

- ``--model``: optional; the weights' config sidecar names the model, and a ``--model`` that
  disagrees with it is an error (``resolve_model``);
- ``--no-progress``: no progress bars;
- ``--json``: stdout carries only the JSON (printed last); every human line goes to stderr
  (``human_output`` while the verb runs, ``print_json`` at the end);
- ``--project/--name/--exist-ok``: run folders ``PROJECT/NAME``, ``NAME2``, ``NAME3``, ... so a
  second run never overwrites the first (``run_folder``).

This module imports nothing heavy (no torch), so verbs that run without torch can use it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

DEFAULT_NAME = "exp"


def add_model_option(parser: argparse.ArgumentParser, what: str = "the weights") -> None:
    """``--model NAME``: optional, checked against the sidecar of ``what``."""
    parser.add_argument("--model", default=None, metavar="NAME",
                        help=f"registered model name (`litedet models`); default: the one {what}' config sidecar "
                             f"names (a different name is an error); needed only for weights without a sidecar")


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: ``args.no_progress``."""
    parser.add_argument("--no-progress", action="store_true", default=False,
                        help="no progress bars (for logs and scripts; default: shown)")


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json``: ``what`` as JSON on stdout, everything else on stderr."""
    parser.add_argument("--json", action="store_true", default=False,
                        help=f"print {what} as JSON on stdout (only that; human output goes to stderr)")


def add_run_options(parser: argparse.ArgumentParser, project: str, name: str = DEFAULT_NAME) -> None:
    """``--project/--name/--exist-ok``: where the run folder goes (see ``run_folder``)."""
    group = parser.add_argument_group("run folder")
    group.add_argument("--project", default=project, help=f"parent folder of run folders (default {project})")
    group.add_argument("--name", default=name,
                       help=f"run folder name (default {name}); taken names get a number: {name}, {name}2, {name}3, ...")
    group.add_argument("--exist-ok", action="store_true", default=False,
                       help="reuse PROJECT/NAME if it exists instead of numbering a new one (default: off)")


def increment_path(path: str | os.PathLike, exist_ok: bool = False) -> Path:
    """``path`` if it is free (or ``exist_ok``), else the first free ``path2``, ``path3``, ...
    (as ultralytics ``increment_path``)."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    number = 2
    while (path.parent / f"{path.name}{number}").exists():
        number += 1
    return path.parent / f"{path.name}{number}"


def run_folder(args: argparse.Namespace, out: str | None = None) -> Path:
    """The folder a run writes: ``out`` when given explicitly (used as is), else
    ``increment_path(PROJECT/NAME, --exist-ok)``."""
    if out:
        return Path(out)
    return increment_path(Path(args.project) / args.name, args.exist_ok)


def check_writable(folder: Path) -> None:
    """``PermissionError`` naming ``folder`` when it (or, before it exists, the nearest existing
    folder above it) cannot be written: a read-only file system or no permission, found before
    a verb's work rather than when it saves its results."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        where = "" if existing == Path(folder) else f" ({existing} is not writable)"
        raise PermissionError(f"cannot write to {folder}{where}: read-only file system or no permission")


def resolve_model(weights: str | os.PathLike | None, model: str | None) -> str | None:
    """The model name for ``weights``: ``model`` or its sidecar's; a ``model`` that disagrees
    with the sidecar is a ValueError naming both. ``None`` when neither says."""
    if not weights:
        return model
    from litedet.config import ModelConfig, sidecar_path

    side = sidecar_path(weights)
    if not side.is_file():
        return model
    config = ModelConfig.load(side)
    if model and model != config.model:
        raise ValueError(f"--model {model} does not match {weights}: its config {side} says {config.model} "
                         f"(leave --model out to use it)")
    return config.model


def find_run(value: str, project: str) -> Path:
    """``--resume`` target: a run folder, a ``last.pt``, or the name of a run under ``project``."""
    path = Path(value)
    if path.exists():
        return path
    candidate = Path(project) / value
    if candidate.exists():
        return candidate
    runs = sorted(p.name for p in Path(project).iterdir() if (p / "last.pt").is_file()) if Path(project).is_dir() else []
    known = f"; runs in {project}: {', '.join(runs[:10])}" if runs else f"; no run with a last.pt in {project}"
    raise FileNotFoundError(f"--resume {value}: no such run folder or checkpoint{known}")


@contextlib.contextmanager
def human_output(json_mode: bool) -> Iterator[None]:
    """While the verb works: with ``json_mode``, send everything printed to stdout to stderr, so
    stdout ends up holding only the JSON that ``print_json`` writes afterwards."""
    if not json_mode:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def print_json(data: Any) -> None:
    """One JSON document on stdout (call it after the ``human_output`` block)."""
    print(json.dumps(data, default=str), flush=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the verb works, SIGTERM ends it like Ctrl-C (``KeyboardInterrupt``), so the verb's
    own clean-up keeps what it has done; the previous handler comes back afterwards. Main thread
    only (elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
