"""Batched inference that streams predictions as Arrow record batches, and Parquet writers.

``predict`` walks a dataset once through a DataLoader and yields one ``pyarrow.RecordBatch`` per
batch in the predictions schema (DESIGN.md §3, cvcore.schema DETECTIONS / CLASSIFICATIONS), so a
split of any size is scored in constant memory. Detection boxes come back in each original
image's pixel coordinates: the eval transform resized the image, so boxes are scaled by the
image's recorded width/height over the input's, then clipped to the image.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from cvcore import schema
from cvcore.engine.device import choose_precision, resolve_device

Task = Literal["detection", "classification"]
TABLE = {"detection": "detections", "classification": "classifications"}


def predict(
    model: nn.Module,
    dataset: Dataset,
    *,
    task: Task,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    score_threshold: float = 0.001,
    max_detections: int = 100,
    nms_iou: float | None = None,
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
    amp: bool = True,
) -> Iterator[pa.RecordBatch]:
    """Run ``model`` over ``dataset`` (or its ``indices``) and yield prediction record batches.

    ``dataset``: a cvcore.data.torch_dataset dataset with eval transforms (it must expose
    ``image_ids``, and for detection ``sizes`` = [(height, width)] of the original images).
    Classification rows: image_id, top-1 category_id and score, and ``scores`` float32[K]
    (softmax). Detection rows: one per kept box, score >= ``score_threshold``, at most
    ``max_detections`` per image (highest scores), boxes xyxy in original pixels. A detector
    with ``set_postprocess`` (YOLOv1, Faster R-CNN, ...) decodes with the same score threshold,
    NMS IoU (``None`` keeps the model's) and detection cap, so its own decoding never drops
    boxes the evaluation asked for. Undecodable images (samples that are None) are skipped. One batch is yielded per loader
    batch, possibly with zero rows. The model is moved to ``device`` and put in eval mode.
    """
    if task not in TABLE:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TABLE)}")
    for attr in ("image_ids",) + (("sizes",) if task == "detection" else ()):
        if not hasattr(dataset, attr):
            raise ValueError(f"predict needs a dataset with .{attr} (a cvcore.data.torch_dataset dataset), got {type(dataset).__name__}")
    device = resolve_device(device) if isinstance(device, str) else device
    precision = choose_precision(device, amp=amp)
    loader = prediction_loader(dataset, batch_size=batch_size, num_workers=num_workers, indices=indices, pin_memory=device.type == "cuda")
    image_ids = np.asarray(dataset.image_ids, dtype=np.int64)
    model.to(device).eval()
    if task == "detection" and hasattr(model, "set_postprocess"):
        model.set_postprocess(score_threshold=score_threshold, nms_iou=nms_iou, max_detections=max_detections)
    with torch.inference_mode():
        for index, images in loader:
            if len(index) == 0:
                yield empty_batch(task)
                continue
            with precision.autocast(device):
                if task == "classification":
                    logits = model(torch.stack(images).to(device, non_blocking=True))
                    yield classification_batch(image_ids[index], logits)
                else:
                    outputs = model([im.to(device, non_blocking=True) for im in images])
                    yield detection_batch(
                        image_ids[index],
                        outputs,
                        input_sizes=[tuple(im.shape[-2:]) for im in images],
                        original_sizes=[dataset.sizes[i] for i in index],
                        score_threshold=score_threshold,
                        max_detections=max_detections,
                    )


def prediction_loader(
    dataset: Dataset, *, batch_size: int, num_workers: int = 0, indices: Sequence[int] | None = None, pin_memory: bool = False
) -> DataLoader:
    """A sequential loader yielding ``(dataset indices: np.ndarray[int64], images: list[float32[3, H, W]])``."""
    return DataLoader(
        _Indexed(dataset, range(len(dataset)) if indices is None else indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_indexed,
        pin_memory=pin_memory,
    )


def num_batches(dataset: Dataset, *, batch_size: int, indices: Sequence[int] | None = None) -> int:
    """How many record batches ``predict`` yields (for progress bars)."""
    return math.ceil((len(dataset) if indices is None else len(indices)) / batch_size)


def classification_batch(image_ids: np.ndarray, logits: torch.Tensor) -> pa.RecordBatch:
    """Rows of the CLASSIFICATIONS table from ``logits[B, K]`` of images ``image_ids[B]``."""
    probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
    b, k = probs.shape
    top = probs.argmax(axis=1)
    scores = pa.LargeListArray.from_arrays(pa.array(np.arange(0, b * k + 1, k, dtype=np.int64)), pa.array(probs.reshape(-1)))
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.asarray(image_ids, dtype=np.int64)),
            pa.array(top.astype(np.int32)),
            pa.array(probs[np.arange(b), top].astype(np.float64)),
            scores,
        ],
        schema=schema.arrow_schema("classifications"),
    )


def detection_batch(
    image_ids: np.ndarray,
    outputs: list[dict[str, torch.Tensor]],
    *,
    input_sizes: list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
    score_threshold: float,
    max_detections: int,
) -> pa.RecordBatch:
    """Rows of the DETECTIONS table from a detector's eval outputs.

    ``outputs[i]``: dict(boxes float[N, 4] xyxy pixels of the input image, labels int64[N],
    scores float[N]). ``input_sizes[i]`` / ``original_sizes[i]``: (height, width) of the model's
    input and of the original image; boxes are scaled from the first to the second.
    """
    cols: dict[str, list[np.ndarray]] = {name: [] for name in schema.DETECTIONS}
    for image_id, out, (in_h, in_w), (h, w) in zip(image_ids, outputs, input_sizes, original_sizes):
        scores = out["scores"].float()
        keep = torch.nonzero(scores >= score_threshold).flatten()
        keep = keep[scores[keep].argsort(descending=True)[:max_detections]]
        boxes = out["boxes"][keep].double().cpu()
        scale = torch.tensor([w / in_w, h / in_h, w / in_w, h / in_h], dtype=torch.float64)
        boxes = boxes * scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        n = len(keep)
        cols["image_id"].append(np.full(n, image_id, dtype=np.int64))
        cols["category_id"].append(out["labels"][keep].cpu().numpy().astype(np.int32))
        cols["score"].append(scores[keep].cpu().numpy().astype(np.float64))
        for j, name in enumerate(("x1", "y1", "x2", "y2")):
            cols[name].append(boxes[:, j].numpy())
    arrays = [pa.array(np.concatenate(v)) if v else pa.array([], type=t) for v, t in zip(cols.values(), schema.arrow_schema("detections").types)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema.arrow_schema("detections"))


def empty_batch(task: Task) -> pa.RecordBatch:
    """A zero-row batch of the task's predictions schema."""
    return pa.RecordBatch.from_pylist([], schema=schema.arrow_schema(TABLE[task]))


# Rows are buffered into row groups of about this size before writing: one row group per small
# inference batch would make files slower to write and to scan (per-group metadata and stats).
ROW_GROUP_ROWS = 64 * 1024
ROW_GROUP_BYTES = 32 * 2**20  # ...or this many bytes (classification rows carry K scores each)


def row_groups(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Gather ``batches`` into tables of at least ROW_GROUP_ROWS rows or ROW_GROUP_BYTES, in order.

    Each yielded table is one Parquet row group to write; the last one holds what is left (even
    zero-row batches, so their schema still reaches the writer). Memory holds one table at a time.
    pyarrow's ParquetWriter has no byte-based row-group size, hence this loop.
    """
    pending: list[pa.RecordBatch] = []
    rows = size = 0
    for batch in batches:
        pending.append(batch)
        rows, size = rows + batch.num_rows, size + batch.nbytes
        if rows >= ROW_GROUP_ROWS or size >= ROW_GROUP_BYTES:
            yield pa.Table.from_batches(pending)
            pending, rows, size = [], 0, 0
    if pending:
        yield pa.Table.from_batches(pending)


def write_predictions(batches: Iterable[pa.RecordBatch], path: str | Path, *, task: Task | None = None) -> Path:
    """Stream ``batches`` into one Parquet file at ``path``, atomically (temp sibling, then rename).

    The schema is the first batch's; ``task`` gives it when ``batches`` may be empty (an empty
    iterable without ``task`` is a ValueError). Memory holds at most one row group
    (:func:`row_groups`). A failure midway leaves no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    writer: pq.ParquetWriter | None = None
    try:
        for table in row_groups(batches):
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        if writer is None:
            if task is None:
                raise ValueError(f"{path}: no prediction batches to write and no task to take the schema from")
            writer = pq.ParquetWriter(tmp, schema.arrow_schema(TABLE[task]))
        writer.close()
        writer = None
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def shard_indices(n: int, *, num_shards: int, shard: int) -> range:
    """The contiguous dataset indices of ``shard`` (0-based) when ``n`` items split into ``num_shards``."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside 0..{num_shards - 1}")
    per = math.ceil(n / num_shards)
    return range(min(n, shard * per), min(n, (shard + 1) * per))


class _Indexed(Dataset):
    """``dataset`` restricted to ``indices``, each sample paired with its index in ``dataset``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        index = int(self.indices[i])
        return index, self.dataset[index]


def _collate_indexed(batch: list[tuple[int, Any]]) -> tuple[np.ndarray, list[torch.Tensor]]:
    kept = [(i, s) for i, s in batch if s is not None]  # undecodable images are dropped here
    index = np.array([i for i, _ in kept], dtype=np.int64)
    return index, [as_float_image(s[0]) for _, s in kept]


def as_float_image(image: torch.Tensor) -> torch.Tensor:
    """A plain float32 tensor in [0, 1]: uint8 images are scaled, float ones passed through.

    tv_tensors are unwrapped to plain tensors so models see ordinary torch.Tensor inputs.
    """
    image = torch.as_tensor(image).as_subclass(torch.Tensor)
    return TF.to_dtype(image, torch.float32, scale=True) if image.dtype == torch.uint8 else image.float()
