"""pytest plugin for ``make mutation``: run a mutant's tests fastest first.

mutmut runs each mutant against the tests that execute the mutated function, with ``-x``, in no
particular order. Sorting them by the durations mutmut measured on the unmutated code
(``mutmut-stats.json`` in the folder pytest runs in) means a mutant that a quick test kills costs
that test, not the slow end-to-end ones listed before it. Tests without a measured duration run last.
"""

from __future__ import annotations

import json
from pathlib import Path


def pytest_collection_modifyitems(session, config, items) -> None:  # noqa: ARG001 - pytest's hook signature
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    durations = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))
