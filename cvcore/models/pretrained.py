"""Pretrained weights: torchvision's (hub cache, downloaded when asked for), a weights file, our checkpoints.

Sources a model can load (``build_model(..., pretrained=...)``):

- ``"torchvision"``: torchvision's published weights from the local torch hub cache
  (``torch.hub.get_dir()/checkpoints``, where ``torch.hub`` / torchvision put them); when none
  is there, the first candidate is downloaded into it (the user asked for it), unless
  ``CVFLOW_OFFLINE=1``; offline, one line names the file to put where. Which weights fit is
  declared by the model (``Transferable``, cvcore.models.capabilities) as ``torchvision_sources``: candidates tried in order, each with key
  renames mapping the file's names onto the model's. Nothing else here downloads.
- a path: a state dict file, or one of our engine checkpoints (a dict with ``"model"``, the
  state dict, and ``"meta"``). Loaded with ``torch.load(weights_only=True)``.

Loading is partial by design (transfer learning): a tensor loads when its name, after the
model's ``transfer_renames`` if needed, exists in the model with the same shape. Everything
else keeps the builder's fresh initialisation, so a head built for a new ``num_classes`` starts
from scratch on a backbone trained elsewhere. A log line says what loaded and what did not.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum

from cvcore.models.capabilities import Transferable

log = logging.getLogger(__name__)

Renames = tuple[tuple[str, str], ...]  # (source key prefix, target key prefix) pairs


class WeightsFileError(ValueError):
    """A file cannot be read as tensors and plain values; one line naming the file and why."""


@dataclass(frozen=True)
class TorchvisionSource:
    """One torchvision weights entry a model can start from, and how its keys map onto the model.

    ``renames``: prefix pairs applied to the file's keys (e.g. ``(("", "backbone."),)`` puts a
    torchvision ResNet's ``layer1.0.conv1.weight`` at ``backbone.layer1.0.conv1.weight``); keys
    matching no pair keep their name.
    """

    weights: WeightsEnum
    renames: Renames = ()

    def moved(self, prefix: str, *, strip: str = "") -> TorchvisionSource:
        """The same weights for a model that holds this source's model under ``prefix``: each
        rename's target loses ``strip`` and gains ``prefix`` (R-CNN holds a classifier as
        ``features.``; Fast R-CNN its ``backbone.`` children as ``backbone.body.``)."""
        return TorchvisionSource(
            self.weights, tuple((old, prefix + new.removeprefix(strip)) for old, new in self.renames)
        )


@dataclass(frozen=True)
class LoadReport:
    """What a partial load did. Names are the model's keys except ``unused`` (the source's)."""

    source: str
    loaded: tuple[str, ...]
    shape_mismatch: tuple[str, ...]  # in both, shapes differ: kept as initialised
    missing: tuple[str, ...]  # in the model, not in the source: kept as initialised
    unused: tuple[str, ...]  # in the source, no place in the model


def imagenet_weights(enum: type[WeightsEnum]) -> list[WeightsEnum]:
    """The full ImageNet-1k entries of a torchvision weights enum, its DEFAULT first.

    Other entries are left out on purpose: e.g. VGG16's IMAGENET1K_FEATURES has no usable classifier.
    """
    members = [w for w in enum if w.name.startswith("IMAGENET1K_V")]
    return sorted(members, key=lambda w: w != enum.DEFAULT)


def hub_cache_path(weights: WeightsEnum) -> Path:
    """Where torch.hub caches ``weights`` (the file name of its URL under ``<hub dir>/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def load_pretrained(model: nn.Module, pretrained: str | os.PathLike, *, model_name: str = "") -> LoadReport:
    """Load ``pretrained`` ("torchvision" or a local file) into ``model`` in place, partially.

    Raises FileNotFoundError when the file (or, for "torchvision", every candidate in the hub
    cache) is missing, and ValueError when nothing in the source fits the model.
    """
    name = model_name or type(model).__name__
    text = os.fspath(pretrained)
    if text == "torchvision":
        path, renames = _cached_torchvision_file(model, name)
    elif "://" in text or text.startswith(("runs:/", "models:/")):
        raise ValueError(f"{text}: MLflow/remote URIs are resolved to a local file by the tasks layer, not by cvcore")
    else:
        path, renames = Path(text), (model.transfer_renames if isinstance(model, Transferable) else ())
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {path}")
    state = read_state_dict(path)
    return load_partial(model, state, renames=renames, source=str(path), model_name=name)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a plain state dict, ``"state_dict"``, or our checkpoint's weights
    (``"model"``, or its ``"ema"`` weights when the run kept an EMA).

    Uses ``weights_only=True``: a file cannot run code when it is read.
    Raises WeightsFileError (a ValueError) for a file that is not one (:func:`load_weights_only`).
    """
    obj = load_weights_only(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("ema"), Mapping) and obj["ema"]:
        # A run that kept an EMA: those weights are what validation scored (as engine.checkpoint.load_model
        # uses them). The EMA is torch.optim.swa_utils.AveragedModel's state: "module." + names, "n_averaged".
        obj = {k.removeprefix("module."): v for k, v in obj["ema"].items() if k.startswith("module.")}
    elif isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: not a state dict (expected a mapping of name -> tensor, or a checkpoint with 'model')"
        )
    return dict(obj)


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: tensors and plain values, never code.

    Raises WeightsFileError naming the file, in one line, for a file holding Python objects (a
    crafted pickle is refused, not run) or one that is not a PyTorch file at all (random bytes,
    text, a truncated archive). torch's own message is pages long and suggests
    ``weights_only=False``, which is exactly what must not be done with such a file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "global" in reason.lower():
            raise WeightsFileError(
                f"{path}: refused to load: it holds Python objects, not only tensors and plain values ({reason})"
            ) from None
        raise WeightsFileError(f"{path}: not a PyTorch weights file ({reason})") from None
    # torch's loaders fail on foreign bytes with these (KeyError: the legacy format's magic number).
    except (RuntimeError, EOFError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "empty or truncated"
        raise WeightsFileError(f"{path}: not a PyTorch weights file ({type(exc).__name__}: {first})") from None


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """The cause inside torch's long weights_only message, e.g. ``Unsupported global: GLOBAL os.system ...``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text) or re.search(
        r"([^\n.]*\bGLOBAL [^\n]*?)(?:\.\s|\.?\n|$)", text
    )
    return found.group(1).strip()[:200] if found else "unreadable"


def load_partial(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    renames: Renames = (),
    source: str = "<state dict>",
    model_name: str = "",
) -> LoadReport:
    """Copy every tensor of ``state`` whose name (as is, else renamed) and shape fit ``model``.

    ``model.load_state_dict(strict=True)`` would reject a new head; ``strict=False`` would still
    fail on shape mismatches, so the matching is done here and only fitting tensors are handed over.
    """
    target = model.state_dict()
    chosen: dict[str, torch.Tensor] = {}
    mismatch: list[str] = []
    unused: list[str] = []
    for key, value in state.items():
        candidates = [key] + [new + key[len(old) :] for old, new in renames if key.startswith(old)]
        hit = next((c for c in candidates if c in target), None)
        if hit is None:
            unused.append(key)
        elif target[hit].shape != value.shape:
            mismatch.append(hit)
        else:
            chosen.setdefault(hit, value)
    name = model_name or type(model).__name__
    if not chosen:
        raise ValueError(f"{source}: none of its {len(state)} tensors fit model {name} (by name and shape)")
    model.load_state_dict(chosen, strict=False)
    report = LoadReport(
        source=source,
        loaded=tuple(chosen),
        shape_mismatch=tuple(mismatch),
        missing=tuple(k for k in target if k not in chosen and k not in mismatch),
        unused=tuple(unused),
    )
    log.info(
        "%s: loaded %d/%d tensors from %s; kept initialised, not in the source: %d%s; kept initialised, "
        "other shape in the source: %d%s; unused source tensors: %d%s",
        name, len(report.loaded), len(target), source, len(report.missing), _few(report.missing),
        len(report.shape_mismatch), _few(report.shape_mismatch), len(report.unused), _few(report.unused),
    )  # fmt: skip
    return report


def _cached_torchvision_file(model: nn.Module, name: str) -> tuple[Path, Renames]:
    """The first of the model's torchvision weights in the hub cache; else download the first one.

    A user who asks for ``pretrained: torchvision`` asks for those weights, so an online machine
    fetches them into the torch hub cache (torch.hub's download: a temporary file renamed into
    place, its SHA-256 prefix checked). ``CVFLOW_OFFLINE=1`` (the test suite sets it) or a failed
    download gives one line naming the file to put where.
    """
    sources = model.torchvision_sources if isinstance(model, Transferable) else ()
    if not sources:
        raise ValueError(f"model {name} declares no torchvision weights; pass a weights file instead")
    for src in sources:
        path = hub_cache_path(src.weights)
        if path.is_file():
            log.info("%s: using cached torchvision weights %s (%s)", name, src.weights, path)
            return path, src.renames
    first = sources[0]
    path = hub_cache_path(first.weights)
    if os.environ.get("CVFLOW_OFFLINE", "") not in ("", "0"):
        why = "CVFLOW_OFFLINE is set"
    else:
        why = _download(first.weights.url, path)
        if why is None:
            log.info("%s: downloaded torchvision weights %s to %s", name, first.weights, path)
            return path, first.renames
    raise FileNotFoundError(
        f"no torchvision weights for {name} in the local torch hub cache ({why}): put {first.weights.url} at {path}"
    )


def _download(url: str, path: Path, *, timeout_s: float = 30.0) -> str | None:
    """Download ``url`` to ``path`` with torch.hub (hash-checked, atomic); None, or why it failed.

    The socket timeout bounds a connection that never answers (torch.hub sets none).
    """
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    match = re.search(r"-([a-f0-9]{8,})\.", path.name)  # torchvision names files <arch>-<sha256 prefix>.pth
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None, progress=True)
    except Exception as exc:  # any network, HTTP, disk or hash failure: report it in one line
        return f"offline? download failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(
            ": "
        )
    finally:
        socket.setdefaulttimeout(previous)
    return None


def _few(names: tuple[str, ...], limit: int = 6) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:limit])
    return f" [{shown}{', ...' if len(names) > limit else ''}]"
