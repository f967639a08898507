"""``build_model``: one call from a registered name to a ready model, pretrained weights included."""

from __future__ import annotations

import inspect
import logging
import os
import re
from typing import Any

from torch import nn

from cvcore.models._registry import model_spec
from cvcore.models.pretrained import load_pretrained

log = logging.getLogger(__name__)


def build_model(
    name: str,
    *,
    num_classes: int,
    pretrained: str | os.PathLike | None = None,
    img_size: int | None = None,
    **options: Any,
) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes (ours, 0..K-1).

    - ``pretrained``: None (random init), ``"torchvision"`` (ImageNet weights from the local torch
      hub cache, downloaded into it when missing unless ``CVFLOW_OFFLINE=1``), or a path to a
      state dict / one of our checkpoints. Loading is partial: matching names and shapes load, the rest (a new head) keeps its fresh init.
    - ``img_size``: the square training/inference size in pixels. Passed to builders that take
      it (small-input classifiers, YOLOv1's input size, Faster R-CNN's resize); others ignore it.
    - ``options``: the model's own keyword options (see its builder's signature).

    Raises ValueError for an unknown model or option, or ``num_classes < 1``.
    """
    spec = model_spec(name)
    if num_classes < 1:
        raise ValueError(f"model {name}: num_classes must be >= 1, got {num_classes}")
    params = inspect.signature(spec.builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in options if k not in params) if not takes_any else []
    if unknown:
        allowed = [k for k in params if k != "num_classes"]
        raise ValueError(f"model {name}: unknown option(s) {unknown}; its options are {allowed}")
    if img_size is not None and (takes_any or "img_size" in params):
        options["img_size"] = img_size
    try:
        model = spec.builder(num_classes=num_classes, **options)
    except TypeError as exc:
        # Builders that pass options on (e.g. to torchvision) learn of an unknown one only here.
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if options and unknown:
            raise ValueError(f"model {name}: unknown option {unknown.group(1)!r} ({exc})") from None
        raise
    if pretrained is not None:
        load_pretrained(model, pretrained, model_name=name)
    return model
