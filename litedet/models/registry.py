"""Model registry: one decorated builder per named variant (timm's ``@register_model``)."""

from __future__ import annotations

import fnmatch
import importlib
from typing import Any, Callable

from torch import nn

_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_MODEL_KINDS: dict[str, str] = {}
# Modules whose import registers models; imported on first lookup so `import litedet` stays light.
_REGISTERING_MODULES = ("litedet.models.backbones", "litedet.models.zoo")


def register_model(kind: str = "backbone") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn`` under its function name with dots for underscores where the name needs them.

    ``kind`` is ``"backbone"`` (builds a classifier by default, ``features_only=True`` for maps)
    or ``"detector"``.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = getattr(fn, "model_name", fn.__name__)
        if name in _MODEL_BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODEL_BUILDERS[name] = fn
        _MODEL_KINDS[name] = kind
        return fn

    return decorator


def _ensure_registered() -> None:
    for module in _REGISTERING_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # a module not written yet must not hide the others
            if err.name != module:
                raise


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Names of registered models matching a glob ``pattern`` (and ``kind`` when given), sorted."""
    _ensure_registered()
    return sorted(
        name
        for name in _MODEL_BUILDERS
        if fnmatch.fnmatch(name, pattern) and (kind is None or _MODEL_KINDS[name] == kind)
    )


def model_kind(name: str) -> str:
    """``"backbone"`` or ``"detector"`` for a registered name."""
    _ensure_registered()
    if name not in _MODEL_KINDS:
        raise ValueError(f"unknown model {name!r}; `litedet models` lists the {len(_MODEL_KINDS)} registered names")
    return _MODEL_KINDS[name]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model. Overrides that are ``None`` are dropped, so CLI defaults never
    clobber a model's own defaults."""
    _ensure_registered()
    if name not in _MODEL_BUILDERS:
        close = fnmatch.filter(_MODEL_BUILDERS, f"*{name.split('_')[0]}*")[:8]
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} `litedet models` lists all registered names.")
    kwargs = {key: value for key, value in overrides.items() if value is not None}
    return _MODEL_BUILDERS[name](**kwargs)
