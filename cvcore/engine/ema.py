"""An exponential moving average (EMA) of a model's weights, on torch.optim.swa_utils.

The average is kept over parameters *and* buffers (``use_buffers=True``), so batch-norm running
statistics of the averaged model match its weights and it can be evaluated as it is.
"""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_ema(model: nn.Module, *, decay: float) -> AveragedModel:
    """An AveragedModel holding ``decay * ema + (1 - decay) * weights`` after each update.

    Call ``ema.update_parameters(model)`` after every optimizer step; evaluate ``ema.module``.
    The copy lives on the model's device.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
