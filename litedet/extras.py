"""Which pip extra installs a missing module, so a missing dependency is one line that says what
to install (``needs the 'torch' extra: pip install 'litedet[torch]'``) instead of a traceback.

The table is read from litedet's own dependency list, never typed twice: ``pyproject.toml`` when
running from a source checkout (the file being edited is the truth), else the installed
package's metadata (``Requires-Dist: torch==2.14.1; extra == "torch"``). Imports only the
standard library.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import sys
from pathlib import Path

# Distribution name -> the module it is imported as, where the two differ.
IMPORT_NAMES: dict[str, str] = {
    "pillow": "PIL",
    "pyyaml": "yaml",
    "opencv-python-headless": "cv2",
    "opencv-python": "cv2",
    "torch-pruning": "torch_pruning",
    "nvidia-ml-py": "pynvml",
    "mkdocs-material": "material",
}

# Extras that only gather others (never the one to name in a message).
AGGREGATE_EXTRAS = ("all",)

CORE = ""  # the extra of a core dependency: plain `pip install litedet`

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed. The message names the pip
    extra that installs it; ``module`` is the missing module, ``extra`` the extra ('' for a core
    dependency)."""

    def __init__(self, message: str, module: str, extra: str) -> None:
        super().__init__(message, name=module)
        self.module = module
        self.extra = extra


def module_name(distribution: str) -> str:
    """The top-level module a distribution is imported as (``pillow`` -> ``PIL``)."""
    key = re.sub(r"[-_.]+", "-", distribution).lower()
    return IMPORT_NAMES.get(key, key.replace("-", "_"))


def _pyproject_requirements() -> list[tuple[str, str]] | None:
    """(requirement, extra) pairs from the ``pyproject.toml`` of a source checkout, or None."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file() or sys.version_info < (3, 11):
        return None
    import tomllib

    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except (OSError, ValueError):
        return None
    if project.get("name") != "litedet":
        return None
    pairs = [(requirement, CORE) for requirement in project.get("dependencies", [])]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        pairs += [(requirement, extra) for requirement in requirements]
    return pairs


def _metadata_requirements() -> list[tuple[str, str]]:
    """(requirement, extra) pairs from the installed package's ``Requires-Dist`` lines."""
    try:
        lines = importlib.metadata.metadata("litedet").get_all("Requires-Dist") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    pairs = []
    for line in lines:
        requirement, _, marker = line.partition(";")
        found = _EXTRA_MARKER.search(marker)
        pairs.append((requirement, found.group(1) if found else CORE))
    return pairs


@functools.lru_cache(maxsize=1)
def extras_table() -> dict[str, str]:
    """Top-level module -> the extra that installs it ('' for a core dependency). A module in
    several extras maps to the first one listed; aggregate extras (``all``) and extras that only
    name litedet itself are skipped."""
    pairs = _pyproject_requirements()
    if pairs is None:
        pairs = _metadata_requirements()
    table: dict[str, str] = {}
    for requirement, extra in pairs:
        match = _REQUIREMENT.match(requirement)
        if not match or extra in AGGREGATE_EXTRAS or match.group(1).lower() == "litedet":
            continue
        table.setdefault(module_name(match.group(1)), extra)
    return table


def extra_for(module: str) -> str | None:
    """The extra that installs ``module`` (``'torch.nn'`` -> ``'torch'``), '' for a core
    dependency, None when litedet does not depend on it."""
    return extras_table().get(module.split(".")[0])


def install_command(extra: str) -> str:
    """The pip command that installs ``extra`` ('' for the core package)."""
    return f"pip install 'litedet[{extra}]'" if extra else "pip install litedet"


def missing_extra_message(module: str | None) -> str | None:
    """``needs the 'torch' extra: pip install 'litedet[torch]'`` for a missing ``module``
    litedet depends on; None when it is not one of litedet's dependencies."""
    if not module:
        return None
    extra = extra_for(module)
    if extra is None:
        return None
    top = module.split(".")[0]
    if extra == CORE:
        return f"needs {top!r}, a core dependency that is missing: {install_command(CORE)}"
    return f"needs the {extra!r} extra (no module named {top!r}): {install_command(extra)}"


def missing_extra_error(err: ModuleNotFoundError, feature: str) -> MissingExtraError | None:
    """A ``MissingExtraError`` saying ``<feature> needs the ... extra`` for ``err``, or None when
    the missing module is not a litedet dependency (a bug to show in full)."""
    message = missing_extra_message(err.name)
    if message is None:
        return None
    extra = extra_for(err.name or "") or CORE
    return MissingExtraError(f"{feature} {message}", err.name or "", extra)
