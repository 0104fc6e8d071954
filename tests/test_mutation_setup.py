"""The mutation-testing setup stays in step with the code (``make mutation`` itself is the nightly
job, too long for this suite): every bug class still finds the line it mutates, every module's
test files exist, the equivalents file parses, and the plugin orders a mutant's tests fastest first."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mutation():
    return _load("litedet_mutation_script", REPO / "scripts" / "mutation.py")


def test_every_bug_class_mutates_exactly_one_existing_line(mutation):
    for bug in mutation.BUG_CLASSES:
        source = (REPO / bug.path).read_text()
        assert source.count(bug.old) == 1, f"bug class {bug.name!r} is stale: {bug.old!r} in {bug.path}"
        assert bug.old != bug.new


def test_every_module_names_existing_files_and_tests(mutation):
    for name, module in mutation.MODULES.items():
        for pattern in module.files:
            assert list(REPO.glob(pattern)), f"{name}: no file matches {pattern}"
        for test in (*module.tests, *module.deselect):
            path, _, function = test.partition("::")
            text = (REPO / path).read_text()
            assert not function or f"def {function}(" in text, f"{name}: {test} does not exist"


def test_the_equivalents_file_parses_into_one_reason_per_line(mutation):
    equivalent = mutation.load_equivalent()
    assert equivalent and all(reason for reason in equivalent.values())
    assert all(key.split(" | ")[0].startswith("litedet.") for key in equivalent)


def test_the_plugin_runs_the_fastest_tests_first_and_unmeasured_ones_last(tmp_path, monkeypatch):
    plugin = _load("litedet_mutation_order", REPO / "scripts" / "mutation_plugins" / "litedet_mutation_order.py")
    items = [SimpleNamespace(nodeid=n) for n in ("t::slow", "t::new", "t::fast", "t::mid")]
    monkeypatch.chdir(tmp_path)
    plugin.pytest_collection_modifyitems(None, None, items)  # no stats yet: order unchanged
    assert [i.nodeid for i in items] == ["t::slow", "t::new", "t::fast", "t::mid"]
    (tmp_path / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": {"t::slow": 9.0, "t::fast": 0.1, "t::mid": 1.0}}))
    plugin.pytest_collection_modifyitems(None, None, items)
    assert [i.nodeid for i in items] == ["t::fast", "t::mid", "t::slow", "t::new"]
