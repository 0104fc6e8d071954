"""Progress bars, drawn only where a person watches them: a bar asked for is shown when stderr
is a terminal, so logs and pipes (``2> run.log``, CI) get no carriage-return frames."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or a manual one with ``total=``): off when not ``enabled``,
    else shown only on a terminal (``tqdm(disable=None)``). ``kwargs`` go to ``tqdm``."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None if enabled else True, **kwargs)
