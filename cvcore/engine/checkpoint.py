"""Checkpoints: atomic writes, safe loads (``weights_only=True``), RNG capture, ``load_model``.

A checkpoint is a plain dict of tensors and Python scalars/containers (docs/CONTRACTS.md)::

    model      state dict of the trained weights
    ema        state dict of the EMA copy (torch.optim.swa_utils.AveragedModel) or None
    optimizer, scheduler, scaler   their state dicts
    epoch      the last finished epoch (1-based)
    rng        torch / cuda / numpy / python / DataLoader-generator states at the end of `epoch`
    loop       the engine's bookkeeping: best score, best epoch, epochs without improvement, history
    meta       model_name, task, num_classes, class_names, img_size, options, config (dict)

Nothing in it needs pickle's arbitrary-object loading, so ``torch.load(weights_only=True)`` reads
it and a checkpoint from elsewhere cannot run code on load.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from cvcore.io import atomic_path, atomic_write

CHECKPOINT_FORMAT = 1
LAST = "last.pt"
BEST = "best.pt"
META_KEYS = ("model_name", "task", "num_classes", "class_names", "img_size", "options", "config")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a cvflow checkpoint; names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary sibling file, fsync, then rename.

    A crash mid-write leaves the previous file intact (never a truncated checkpoint).
    """
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        torch.save(state, fh)
    return path


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy a file to ``dst`` atomically (temp sibling then rename); used for best.pt = last.pt.

    A hard link where the file system has them: :func:`save_checkpoint` always replaces a file
    with a new one (never writes into it), so the linked best.pt keeps its contents when the
    next epoch's last.pt arrives, and no 100+ MiB copy is written per improving epoch.
    """
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        try:
            tmp.unlink()
            os.link(src, tmp)
        except OSError:  # no hard links here (some network or FAT file systems): copy
            shutil.copyfile(src, tmp)
    return dst


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (→ its ``best.pt``, else ``last.pt``).

    Raises CheckpointError naming the path when neither exists.
    """
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no {BEST} or {LAST}; is it a cvflow run folder?")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; CheckpointError naming the file otherwise."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a pickled object
        raise CheckpointError(f"{path}: refused to load, it holds more than tensors and plain values ({exc})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise CheckpointError(f"{path}: not a cvflow checkpoint (expected a dict with 'model' and 'meta')")
    return state


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The states of every random source a run draws from, as tensors and plain values.

    ``generator`` is the train DataLoader's generator (shuffling order and worker seeds).
    """
    np_state = np.random.get_state()
    version, mt, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": str(np_state[0]),
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "generator": generator.get_state() if generator is not None else None,
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Put back the states captured by :func:`capture_rng` (the inverse, exactly)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["bit_generator"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def ema_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain model state dict inside an AveragedModel's state dict (drops ``n_averaged``)."""
    prefix = "module."
    return {k[len(prefix) :]: v for k, v in ema_state.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class LoadedModel:
    """A model rebuilt from a checkpoint (in eval mode, on CPU) and the checkpoint's ``meta``.

    Unpacks like the contract's pair: ``model, meta = load_model(path)``.
    """

    model: nn.Module
    meta: dict[str, Any]
    path: Path

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.meta))


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the registered model a checkpoint (or run folder) holds, with its weights.

    The EMA weights are used when the run kept an EMA (they are what validation scored);
    ``pretrained`` is never fetched again, the checkpoint has every weight.
    Raises CheckpointError naming the file when meta is incomplete or the weights do not fit.
    """
    from cvcore.models import build_model  # deferred: building models imports torchvision.models

    state = load_checkpoint(path)
    file = resolve_checkpoint(path)
    meta = state["meta"]
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{file}: meta lacks {missing}; it was not written by cvflow's engine")
    model = build_model(
        meta["model_name"],
        num_classes=meta["num_classes"],
        pretrained=None,
        img_size=meta["img_size"],
        **meta["options"],
    )
    weights = ema_weights(state["ema"]) if state.get("ema") else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: weights do not fit model {meta['model_name']!r}: {exc}") from None
    return LoadedModel(model=model.eval(), meta=meta, path=file)
