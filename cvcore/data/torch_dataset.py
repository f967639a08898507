"""torch Datasets over a snapshot split, in torchvision's detection/classification conventions.

Detection samples are ``(image, target)`` with ``image: tv_tensors.Image uint8[3, H, W]`` and
``target = {"boxes": tv_tensors.BoundingBoxes float32[N, 4] XYXY pixels, "labels": int64[N],
"image_id": int}``, so torchvision.transforms.v2 moves boxes with pixels. Classification samples
are ``(image, label: int)``.

Images are decoded lazily in ``__getitem__`` (EXIF orientation applied), so the datasets work with
``num_workers > 0``. An image that fails to decode is logged and yields ``None``; the collate
functions drop such samples, so one bad file never kills a run. So does a row whose file name
leads outside the image root (``..``, an absolute path, a link out of it): it is never opened,
and its file name and reason are kept in the dataset's ``refused`` (index → (file name, reason)).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import polars as pl
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors

from cvcore.data.snapshot import Snapshot

log = logging.getLogger(__name__)

Transform = Callable[..., object]


def load_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to ``uint8[3, H, W]`` RGB, as displayed (EXIF orientation applied).

    PIL decodes (torchvision.io's decoders are deprecated since 0.29 in favour of torchcodec, which
    is not a dependency here; PIL uses libjpeg-turbo for JPEG as well). Raises OSError/ValueError
    for files that are not decodable images (truncated, zero-byte, not an image).
    """
    with Image.open(path) as im:
        im.load()  # decode now, so a truncated file fails here and not later in a transform
        arr = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def image_paths(
    snapshot: Snapshot, file_names: Iterable[str], *, split: str
) -> tuple[list[str], dict[int, tuple[str, str]]]:
    """The absolute paths of ``file_names`` inside the snapshot's image root, and the refused ones.

    A name that leads outside the root (cvcore.io.resolve_inside: ``..``, absolute, a link out)
    gets the path ``""`` and ``(file name, reason)`` under its index in the dict; nothing else is
    refused here. When every name is refused the split has nothing to read: ValueError naming
    the snapshot and the first reason (a run would otherwise "finish" on no image at all).
    """
    paths: list[str] = []
    refused: dict[int, tuple[str, str]] = {}
    for index, file_name in enumerate(file_names):
        try:
            paths.append(str(snapshot.image_path(file_name)))
        except ValueError as exc:
            paths.append("")
            refused[index] = (file_name, str(exc))
    if refused and len(refused) == len(paths):
        raise ValueError(
            f"{snapshot.path}: every image file name of split {split!r} leads outside the image root, e.g. {refused[0][1]}"
        )
    if refused:
        log.warning("%s: %d image(s) whose file name leads outside the image root are skipped, e.g. %s",
                    snapshot.path, len(refused), next(iter(refused.values()))[1])  # fmt: skip
    return paths, refused


def _decode(dataset, index: int) -> torch.Tensor | None:
    """The pixels of sample ``index`` of ``dataset`` (load_image), or None, logged, when it is refused or undecodable."""
    if index in dataset.refused:
        return None  # never opened: warned about once when the dataset was made
    try:
        return load_image(dataset.paths[index])
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("skipping undecodable image %s: %s", dataset.paths[index], exc)
        return None


def no_readable_images_error(dataset, *, limit: int = 3) -> ValueError:
    """The one-line error for a split of which no image could be read: its split, snapshot, first files and reasons.

    ``dataset`` is a DetectionDataset/ClassificationDataset or a wrapper of one (``.dataset``
    chains: SeededDataset, MosaicDataset, the engine's EpochDataset). The first ``limit`` images
    are opened again here (the DataLoader's workers only logged why each failed).
    """
    while not hasattr(dataset, "paths") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    failures = []
    for index in range(len(dataset.paths)):
        if index in dataset.refused:
            failures.append(dataset.refused[index])
        else:
            try:
                load_image(dataset.paths[index])
                continue
            except (OSError, RuntimeError, ValueError) as exc:
                failures.append((dataset.paths[index], f"{type(exc).__name__}: {exc}".replace("\n", " ")))
        if len(failures) == limit:
            break
    shown = "; ".join(f"{name} ({reason})" for name, reason in failures)
    return ValueError(
        f"split {dataset.split!r} of {dataset.snapshot_path}: none of its {len(dataset.paths)} images could be read, "
        f"e.g. {shown}; fix or remove these files (a split with some unreadable images trains on the rest)"
    )


class DetectionDataset(torch.utils.data.Dataset):
    """One split of a detection snapshot. ``transforms(image, target) -> (image, target)``."""

    def __init__(self, snapshot: Snapshot, split: str, transforms: Transform | None = None):
        if snapshot.task != "detection" or snapshot.annotations is None:
            raise ValueError(f"{snapshot.path} is a {snapshot.task} snapshot, not detection")
        imgs = snapshot.split_images(split)
        self.snapshot_path = snapshot.path
        self.split = split
        self.transforms = transforms
        self.image_ids = imgs.get_column("image_id").to_numpy()
        self.paths, self.refused = image_paths(snapshot, imgs.get_column("file_name"), split=split)
        self.sizes = list(zip(imgs.get_column("height").to_list(), imgs.get_column("width").to_list()))
        anns = snapshot.annotations.filter(pl.col("image_id").is_in(imgs.get_column("image_id").implode()))
        # Crowd regions are not objects to learn; evaluation still sees them via the snapshot.
        anns = anns.filter(~pl.col("iscrowd")).sort("ann_id")
        grouped = {
            k[0]: (
                g.select("x1", "y1", "x2", "y2").to_numpy().astype(np.float32),
                g.get_column("category_id").to_numpy(),
            )
            for k, g in anns.group_by("image_id")
        }
        empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))
        self.targets = [grouped.get(int(i), empty) for i in self.image_ids]

    def __len__(self) -> int:
        return len(self.paths)

    def raw(self, index: int) -> tuple[tv_tensors.Image, dict] | None:
        """The untransformed sample at ``index``, or None when the image cannot be decoded."""
        pixels = _decode(self, index)
        if pixels is None:
            return None
        h, w = pixels.shape[-2:]
        boxes, labels = self.targets[index]
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes.copy()), format="XYXY", canvas_size=(h, w)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "image_id": int(self.image_ids[index]),
        }
        return tv_tensors.Image(pixels), target

    def __getitem__(self, index: int):
        sample = self.raw(index)
        if sample is None or self.transforms is None:
            return sample
        return self.transforms(*sample)


class ClassificationDataset(torch.utils.data.Dataset):
    """One split of a classification snapshot. ``transforms(image) -> image``."""

    def __init__(self, snapshot: Snapshot, split: str, transforms: Transform | None = None):
        if snapshot.task != "classification" or snapshot.labels is None:
            raise ValueError(f"{snapshot.path} is a {snapshot.task} snapshot, not classification")
        imgs = snapshot.split_images(split).join(snapshot.labels, on="image_id", how="inner")
        self.snapshot_path = snapshot.path
        self.split = split
        self.transforms = transforms
        self.image_ids = imgs.get_column("image_id").to_numpy()
        self.paths, self.refused = image_paths(snapshot, imgs.get_column("file_name"), split=split)
        self.labels = imgs.get_column("category_id").to_numpy().astype(np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def raw(self, index: int) -> tuple[tv_tensors.Image, int] | None:
        pixels = _decode(self, index)
        if pixels is None:
            return None
        return tv_tensors.Image(pixels), int(self.labels[index])

    def __getitem__(self, index: int):
        sample = self.raw(index)
        if sample is None or self.transforms is None:
            return sample
        return self.transforms(sample[0]), sample[1]


def collate_detection(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """``(images, targets)`` as lists (detectors take variable image sizes); None samples dropped."""
    batch = [b for b in batch if b is not None]
    return [b[0] for b in batch], [b[1] for b in batch]


def collate_classification(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float/uint8[B, 3, H, W], labels int64[B])``; None samples dropped.

    Images must already share one size (the transforms resize them).
    """
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    return torch.stack([torch.as_tensor(b[0]) for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.int64)


def dataset_for(snapshot: Snapshot, split: str, transforms: Transform | None = None):
    """The Dataset class matching the snapshot's task."""
    cls = DetectionDataset if snapshot.task == "detection" else ClassificationDataset
    return cls(snapshot, split, transforms)
