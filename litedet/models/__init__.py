"""Networks: backbones, necks, heads, detectors and the registry that names them."""

from litedet.models.registry import create_model, list_models, model_kind, register_model

__all__ = ["create_model", "list_models", "model_kind", "register_model"]
