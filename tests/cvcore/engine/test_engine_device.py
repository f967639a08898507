"""Device and precision choices."""

from __future__ import annotations

import pytest
import torch

from cvcore.engine.device import choose_precision, make_scaler, resolve_device


def test_auto_picks_cuda_only_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_bad_device_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_cpu_runs_in_float32_without_scaler():
    p = choose_precision(torch.device("cpu"), amp=True)
    assert p.dtype is None and not p.use_scaler
    assert not make_scaler(torch.device("cpu"), p).is_enabled()
    with p.autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_prefers_bf16():
    p = choose_precision(torch.device("cuda"), amp=True)
    assert p.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert p.use_scaler == (p.dtype == torch.float16)
    assert choose_precision(torch.device("cuda"), amp=False).dtype is None
