"""The package's layers: lower layers import nothing from higher ones, and the runtime stays
torch-free. Read from the source (the AST of every import, function-level ones included), so a
lazy import that closes a circle fails here too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "litedet"

# Leaf modules: every layer may use them; they import only each other, in this order.
LEAVES: dict[str, set[str]] = {"errors": set(), "extras": set(), "progress": set(), "config": {"errors"}}

# Low layer -> the litedet packages it may import besides itself and the leaves. Everything
# above (engine, export, compress, bench, distributed, cli, api, tuner) builds on these.
ALLOWED: dict[str, set[str]] = {
    "ops": set(),
    "layers": set(),
    "models": {"layers", "ops"},
    "data": {"ops"},
    "runtime": {"models"},  # only the torch engine (RUNTIME_TORCH_MODULES) opens checkpoints
}

# The one runtime module that may import litedet.models (and torch): the torch engine.
RUNTIME_TORCH_MODULES = {"litedet.runtime.torch_backend"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in ``path``; relative imports
    resolved against the module's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    # imports under `if TYPE_CHECKING:` at module level never run
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top_level |= {id(child) for child in ast.walk(node)}
            for child in ast.walk(node):
                setattr(child, "_type_checking", True)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "_type_checking", False):
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno, id(node) in top_level))
    return found


def _modules(layer: str) -> list[Path]:
    target = PACKAGE / layer
    return sorted(target.rglob("*.py")) if target.is_dir() else [PACKAGE / f"{layer}.py"]


@pytest.mark.parametrize("layer", sorted(ALLOWED) + sorted(LEAVES))
def test_lower_layers_import_nothing_from_higher_ones(layer: str) -> None:
    allowed = {layer} | (LEAVES[layer] if layer in LEAVES else set(LEAVES) | ALLOWED[layer])
    bad = []
    for path in _modules(layer):
        name = _module_name(path)
        for module, line, _ in _imports(path):
            parts = module.split(".")
            if parts[0] != "litedet" or len(parts) < 2:
                continue
            target = parts[1]
            if target == "models" and layer == "runtime" and name in RUNTIME_TORCH_MODULES:
                continue
            if target not in allowed or (target == "models" and layer == "runtime"):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not bad, f"litedet.{layer} may import only {sorted(allowed)}:\n" + "\n".join(bad)


def test_runtime_imports_no_torch_at_module_level() -> None:
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for path in _modules("runtime")
        if _module_name(path) not in RUNTIME_TORCH_MODULES
        for module, line, top in _imports(path)
        if top and module.split(".")[0] in ("torch", "torchvision", "safetensors")
    ]
    assert not bad, "the runtime must run without torch:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The walk finds function-level and relative imports (the ones that closed the old circle)."""
    module = PACKAGE / "models" / "checkpoint.py"
    found = {m for m, _, _ in _imports(module)}
    assert "litedet.models.registry" in found  # imported inside a function
    assert all(not m.startswith(("litedet.compress", "litedet.engine", "litedet.export")) for m in found)
    sample = PACKAGE / "ops" / "__init__.py"
    assert {m for m, _, top in _imports(sample) if top} >= {"litedet.ops.boxes"}


def test_import_litedet_and_its_runtime_pull_no_torch() -> None:
    code = (
        "import sys, litedet, litedet.api, litedet.runtime, litedet.extras, litedet.cli, litedet.engine.predictor, "
        "litedet.data.sources\n"
        "litedet.load, litedet.Model, litedet.Detections\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'openvino', 'ncnn') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"imported without being used: {result.stdout.strip()}"
