"""Models: a registry of classifiers and detectors sharing one interface (see _registry.py)."""

from cvcore.models._registry import ModelSpec, list_models, model_spec, register_model

__all__ = ["ModelSpec", "list_models", "model_spec", "register_model"]
