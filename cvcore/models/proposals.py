"""Region proposals for the two-stage detectors of the notes (R-CNN, Fast R-CNN).

- :func:`selective_search`: hierarchical grouping of a graph-based over-segmentation by colour,
  texture, size and fill similarity (Uijlings et al. 2013), "fast" or "quality" strategy, capped
  at ``max_proposals`` (about 2,000 in the notes).
- :func:`sliding_windows`: every window of several sizes and aspect ratios at a stride.
- :func:`proposal_recall`: how many ground-truth objects the proposals can possibly find
  (the best proposal's IoU reaches 0.5 / 0.7).
- :class:`TensorCache`: a content-addressed cache of tensors, in memory and optionally on disk,
  so slow proposal and feature extraction runs once per image.

All boxes are ``float32[N, 4]`` xyxy pixels of the image they were computed on.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import pickle
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou, clip_boxes_to_image, remove_small_boxes

from cvcore.io import atomic_write

log = logging.getLogger(__name__)

Strategy = Literal["fast", "quality"]
STRATEGIES: tuple[str, ...] = ("fast", "quality")
Method = Literal["selective_search", "sliding_windows"]
METHODS: tuple[str, ...] = ("selective_search", "sliding_windows")


@dataclass(frozen=True)
class ProposalSettings:
    """How a detector gets its regions: selective search or sliding windows, and their knobs.

    ``max_proposals`` caps both methods (sliding windows beyond the cap are thinned evenly).
    ``key()`` names the settings for caches: the same settings on the same pixels give the
    same proposals.
    """

    method: Method = "selective_search"
    strategy: Strategy = "fast"
    max_proposals: int = 2000
    window_sizes: tuple[float, ...] = (16.0, 32.0, 64.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    stride: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown proposal method {self.method!r}; choose one of {METHODS}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown selective-search strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if self.max_proposals < 1:
            raise ValueError(f"max_proposals must be at least 1, got {self.max_proposals}")
        # tuples, so the settings hash and compare by value (options may arrive as lists from YAML)
        object.__setattr__(self, "window_sizes", tuple(float(s) for s in self.window_sizes))
        object.__setattr__(self, "aspect_ratios", tuple(float(a) for a in self.aspect_ratios))

    def propose(self, image: torch.Tensor) -> torch.Tensor:
        """Proposals of one ``[3, H, W]`` image: ``float32[N, 4]`` xyxy pixels, ``N <= max_proposals``."""
        if self.method == "selective_search":
            return selective_search(image, strategy=self.strategy, max_proposals=self.max_proposals, seed=self.seed)
        h, w = image.shape[-2:]
        boxes = sliding_windows(h, w, sizes=self.window_sizes, aspect_ratios=self.aspect_ratios, stride=self.stride)
        if len(boxes) > self.max_proposals:
            keep = torch.linspace(0, len(boxes) - 1, self.max_proposals).round().long()
            boxes = boxes[keep]
        return boxes

    def key(self) -> str:
        """A short digest of the settings (cache folder names)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def selective_search(
    image: torch.Tensor,
    *,
    strategy: Strategy = "fast",
    max_proposals: int = 2000,
    min_size: float = 2.0,
    seed: int = 0,
) -> torch.Tensor:
    """Selective-search proposals of one image.

    Uses OpenCV's implementation (opencv-contrib ``ximgproc``): it is maintained, in C++, and
    follows the paper (Felzenszwalb segmentations in several colour spaces and ``k``, merged
    greedily by the paper's similarity measures). ``strategy="fast"`` is the paper's
    "Selective Search Fast" (2 colour spaces, 2 ``k``, 2 strategies), ``"quality"`` its
    "Quality" setting (5 colour spaces, 4 ``k``, 4 strategies; about 3x slower, more boxes).

    Args:
        image: ``uint8[3, H, W]`` or float ``[3, H, W]`` in [0, 1], RGB.
        strategy: ``"fast"`` or ``"quality"``.
        max_proposals: keep at most this many, in OpenCV's ranking (the paper's pseudo-random
            "level x random" order, which mixes hierarchy levels so a cap keeps all scales).
        min_size: drop boxes narrower or lower than this many pixels.
        seed: seeds that ranking. OpenCV draws it from the C library's ``rand()``, so the C
            generator is seeded just before the call (one process-wide generator: concurrent
            calls from several threads may still interleave).

    Returns:
        ``float32[N, 4]`` xyxy pixels, ``N <= max_proposals``, clipped to the image, unique.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selective-search strategy {strategy!r}; choose one of {STRATEGIES}")
    if max_proposals < 1:
        raise ValueError(f"max_proposals must be at least 1, got {max_proposals}")
    bgr = _to_bgr_uint8(image)
    h, w = bgr.shape[:2]
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(bgr)
    if strategy == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    _seed_c_rand(seed)
    rects = search.process()  # int32[N, 4] x, y, w, h (already de-duplicated by OpenCV)
    boxes = torch.from_numpy(rects[:max_proposals].astype(np.float32)).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes = clip_boxes_to_image(boxes, (h, w))
    return boxes[remove_small_boxes(boxes, min_size)]


def sliding_windows(
    height: int,
    width: int,
    *,
    sizes: Sequence[float] = (16, 32, 64),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    stride: int = 8,
) -> torch.Tensor:
    """Every window of each size and aspect ratio that fits in the image, moved by ``stride``.

    A window of size ``s`` and aspect ratio ``a`` (height / width, as torchvision's anchors) is
    ``round(s / sqrt(a))`` wide and ``round(s * sqrt(a))`` high, so its area stays about ``s**2``.
    Windows start at the top-left corner and step by ``stride`` pixels while they fit inside, so a
    ``w x h`` window contributes ``(floor((W - w) / stride) + 1) * (floor((H - h) / stride) + 1)``
    boxes (none when it is larger than the image).

    Returns:
        ``float32[N, 4]`` xyxy pixels, ordered by size, then aspect ratio, then row, then column.
    """
    if stride < 1:
        raise ValueError(f"stride must be a positive number of pixels, got {stride}")
    if any(s <= 0 for s in sizes) or any(a <= 0 for a in aspect_ratios):
        raise ValueError(f"sizes and aspect ratios must be positive, got {sizes} and {aspect_ratios}")
    out = []
    for size in sizes:
        for ratio in aspect_ratios:
            bw, bh = window_shape(size, ratio)
            if bw > width or bh > height:
                continue
            xs = torch.arange(0, width - bw + 1, stride, dtype=torch.float32)
            ys = torch.arange(0, height - bh + 1, stride, dtype=torch.float32)
            y0, x0 = torch.meshgrid(ys, xs, indexing="ij")
            x0, y0 = x0.reshape(-1), y0.reshape(-1)
            out.append(torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1))
    return torch.cat(out) if out else torch.zeros((0, 4), dtype=torch.float32)


def window_shape(size: float, aspect_ratio: float) -> tuple[int, int]:
    """``(width, height)`` in whole pixels of a window of ``size`` and ``aspect_ratio`` (h / w)."""
    root = float(np.sqrt(aspect_ratio))
    return max(1, int(round(size / root))), max(1, int(round(size * root)))


@dataclass(frozen=True)
class ProposalRecall:
    """How many ground-truth objects the proposals can find.

    ``recall[t]`` is the fraction of ground-truth boxes whose best proposal has IoU >= ``t``.
    """

    recall: dict[float, float]
    num_gt: int
    num_images: int
    proposals_per_image: float

    def as_metrics(self, prefix: str = "proposal_") -> dict[str, float]:
        """Flat metrics for logging: ``proposal_recall_50``, ``proposal_recall_70``, ..."""
        out = {f"{prefix}recall_{round(t * 100):02d}": r for t, r in self.recall.items()}
        out[f"{prefix}per_image"] = self.proposals_per_image
        return out


def proposal_recall(
    proposals: Sequence[torch.Tensor],
    gt: Sequence[torch.Tensor],
    *,
    iou: Sequence[float] = (0.5, 0.7),
) -> ProposalRecall:
    """Recall of the proposals against the ground truth, image by image.

    Args:
        proposals: per image ``float[P_i, 4]`` xyxy pixels.
        gt: per image ``float[G_i, 4]`` xyxy pixels, in the same image order.
        iou: the IoU thresholds at which an object counts as found.

    Returns:
        ProposalRecall; recall is 0.0 at every threshold when there is no ground truth at all.
    """
    if len(proposals) != len(gt):
        raise ValueError(f"proposals cover {len(proposals)} images but gt covers {len(gt)}")
    best = []
    for props, boxes in zip(proposals, gt):
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        props = torch.as_tensor(props, dtype=torch.float32).reshape(-1, 4)
        if len(boxes) == 0:
            continue
        if len(props) == 0:
            best.append(torch.zeros(len(boxes)))
            continue
        best.append(box_iou(boxes, props).max(dim=1).values)
    best_iou = torch.cat(best) if best else torch.zeros(0)
    n = len(best_iou)
    recall = {float(t): (float((best_iou >= t).sum()) / n if n else 0.0) for t in iou}
    per_image = float(np.mean([len(p) for p in proposals])) if len(proposals) else 0.0
    return ProposalRecall(recall=recall, num_gt=n, num_images=len(proposals), proposals_per_image=per_image)


def dataset_proposal_recall(
    propose: Callable[[torch.Tensor], torch.Tensor], dataset, *, iou: Sequence[float] = (0.5, 0.7)
) -> ProposalRecall:
    """:func:`proposal_recall` of ``propose(image)`` over a detection dataset.

    ``dataset[i]`` is ``(image [3, H, W] uint8 or float in [0, 1], target with "boxes")`` (a
    cvcore.data.torch_dataset.DetectionDataset, transformed or not) or None (skipped); boxes and
    proposals are compared in that image's pixels. Run it after inference and a model's
    proposal cache makes it nearly free.
    """
    props, gt = [], []
    with torch.inference_mode():
        for index in range(len(dataset)):
            sample = dataset[index]
            if sample is None:
                continue
            image, target = sample
            image = torch.as_tensor(image).as_subclass(torch.Tensor)
            image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
            props.append(propose(image).cpu())
            gt.append(torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor).reshape(-1, 4))
    return proposal_recall(props, gt, iou=iou)


def image_key(image: torch.Tensor, *extra: torch.Tensor) -> str:
    """A content digest of an image tensor (and optional extra tensors, e.g. its boxes).

    Used as a cache key: the same pixels give the same proposals and features, whatever the
    image id, split or augmentation that produced them.
    """
    h = hashlib.sha256()
    for t in (image, *extra):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class TensorCache:
    """A content-addressed cache of dicts of tensors: an LRU in memory, optionally files on disk.

    ``root=None`` keeps entries in memory only. On disk each entry is ``<root>/<key[:2]>/<key>.pt``,
    written atomically (temporary file, then rename) and read back with ``weights_only=True``.
    The memory part holds at most ``max_memory_bytes`` of tensor data (least recently used
    entries are dropped first; they stay on disk).
    """

    def __init__(self, root: str | Path | None = None, *, max_memory_bytes: int = 1 << 30):
        self.root = Path(root) if root is not None else None
        self.max_memory_bytes = max_memory_bytes
        self._memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._memory_bytes = 0
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The entry under ``key``; computed by ``compute()`` (and stored) when absent."""
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return entry
        entry = self._read(key)
        if entry is None:
            self.misses += 1
            computed = compute()
            # Stored as ordinary tensors even when computed under inference_mode (predict), so a
            # later training step may use them.
            with torch.inference_mode(False):
                entry = {k: v.detach().to("cpu").clone() for k, v in computed.items()}
            self._write(key, entry)
        else:
            self.hits += 1
        self._remember(key, entry)
        return entry

    def clear_memory(self) -> None:
        """Forget the in-memory entries (files on disk stay)."""
        self._memory.clear()
        self._memory_bytes = 0

    def _remember(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        self._memory[key] = entry
        self._memory_bytes += _nbytes(entry)
        while self._memory_bytes > self.max_memory_bytes and len(self._memory) > 1:
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= _nbytes(dropped)

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.pt"

    def _read(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.root is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:  # truncated or foreign: recompute
            log.warning("ignoring unreadable cache entry %s: %s", path, exc)
            return None

    def _write(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        if self.root is None:
            return
        with atomic_write(self._path(key), "wb") as fh:
            torch.save(entry, fh)


def _nbytes(entry: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())


def _to_bgr_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` RGB (uint8, or float in [0, 1]) → contiguous ``uint8[H, W, 3]`` BGR for OpenCV."""
    image = torch.as_tensor(image).detach().to("cpu")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image tensor [3, H, W], got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy()[:, :, ::-1])


def _seed_c_rand(seed: int) -> None:
    # OpenCV's selective search ranks regions by "level x std::rand()"; seeding the C generator is
    # the only handle on that order. Where the C library cannot be reached the order stays random.
    try:
        ctypes.CDLL(None).srand(ctypes.c_uint(seed))
    except (OSError, AttributeError, TypeError) as exc:
        log.debug("cannot seed the C rand() used by OpenCV's selective search: %s", exc)
