"""Batched inference that streams predictions as Arrow record batches, and Parquet writers.

``predict`` walks a dataset once through a DataLoader and yields one ``pyarrow.RecordBatch`` per
batch in the predictions schema (docs/ARCHITECTURE.md §3, cvcore.schema DETECTIONS / CLASSIFICATIONS), so a
split of any size is scored in constant memory. Detection boxes come back in each original
image's pixel coordinates: the eval transform resized the image, so boxes are scaled by the
image's recorded width/height over the input's, then clipped to the image.

``predict_checkpoint`` is the one path from a checkpoint to predictions (checkpoint → the
split's eval dataset → ``predict`` decoding as the run's EvalConfig says: score threshold, NMS
IoU, detections per image); ``cvflow predict``, the pipelines' predict task and the bake-off all
use it, and per-epoch validation uses the same :func:`decode_options`.

An image that cannot be read at prediction time has no rows; ``predict`` reports it (file and
reason) through ``on_unreadable`` and the writers record those reports in the Parquet footer
(``cvflow.unreadable``), where evaluation finds them (cvcore.engine.shards.read_unreadable_shards)
and leaves the images out of the evaluated universe.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from cvcore import schema
from cvcore.engine.device import choose_precision, configure_threads, resolve_device
from cvcore.io import ORPHAN_AGE_S, atomic_path, existing_output, remove_temporaries
from cvcore.models.capabilities import Postprocessable

if TYPE_CHECKING:
    from cvcore.config import EvalConfig
    from cvcore.data.snapshot import Snapshot
    from cvcore.engine.checkpoint import LoadedModel

log = logging.getLogger(__name__)

Task = Literal["detection", "classification"]
TABLE = {"detection": "detections", "classification": "classifications"}
UNREADABLE_KEY = b"cvflow.unreadable"  # Parquet key-value metadata: JSON list of Unreadable records
UNREADABLE_SCHEMA = {"image_id": pl.Int64, "file_name": pl.String, "reason": pl.String}
REASON_CHARS = 300  # a decoder's message is cut to this many characters


@dataclass(frozen=True)
class Unreadable:
    """An image of the split that could not be read at prediction time (it has no prediction rows).

    ``file_name``: the image file's path as the dataset holds it; ``reason``: the decoder's error.
    """

    image_id: int
    file_name: str
    reason: str


def unreadable_frame(records: Iterable[Unreadable]) -> pl.DataFrame:
    """``records`` as a frame: image_id int64, file_name str, reason str (sorted by image_id)."""
    rows = [asdict(r) for r in records]
    return pl.DataFrame(rows, schema=UNREADABLE_SCHEMA, orient="row").unique("image_id", keep="first").sort("image_id")


def unreadable_metadata(records: Iterable[Unreadable]) -> dict[bytes, bytes]:
    """The Parquet key-value metadata entry recording ``records`` (read back by :func:`read_unreadable`)."""
    return {UNREADABLE_KEY: json.dumps([asdict(r) for r in records]).encode()}


def unreadable_from_metadata(metadata: dict[bytes, bytes] | None) -> list[Unreadable]:
    """The records of a Parquet footer's ``cvflow.unreadable`` entry (none when absent)."""
    raw = (metadata or {}).get(UNREADABLE_KEY)
    return [] if raw is None else [Unreadable(**r) for r in json.loads(raw)]


def decode_options(eval_config: "EvalConfig") -> dict[str, Any]:
    """The ``predict`` keywords that a run's EvalConfig fixes: score threshold, NMS IoU, detections per image.

    The one mapping from the config to the decoding, so validation, ``cvflow predict``, the
    pipelines and the bake-off all decode a model the same way.
    """
    return {
        "score_threshold": eval_config.score_threshold,
        "nms_iou": eval_config.nms_iou,
        "max_detections": eval_config.max_detections,
    }


def checkpoint_eval_config(meta: dict[str, Any]) -> "EvalConfig":
    """The EvalConfig a checkpoint's run was configured with (``meta["config"]["eval"]``; defaults when absent)."""
    from cvcore.config import EvalConfig

    return EvalConfig.model_validate(meta.get("config", {}).get("eval", {}))


@dataclass(frozen=True)
class CheckpointPredictions:
    """What :func:`predict_checkpoint` sets up: the model, the dataset, the decoding, and the lazy batches.

    ``batches`` runs the model when iterated (once); ``unreadable`` fills up as it goes and is
    complete when ``batches`` is exhausted.
    """

    model: nn.Module
    meta: dict[str, Any]
    path: Path | None
    dataset: Dataset
    eval_config: "EvalConfig"
    batches: Iterator[pa.RecordBatch]
    unreadable: list[Unreadable] = field(default_factory=list)

    @property
    def task(self) -> Task:
        return self.meta["task"]


def predict_checkpoint(
    checkpoint: "str | Path | LoadedModel",
    snapshot: "Snapshot",
    split: str,
    *,
    eval_config: "EvalConfig | None" = None,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
    amp: bool = True,
) -> CheckpointPredictions:
    """Predictions of a checkpoint on ``split`` of ``snapshot``, decoded as the run's EvalConfig says.

    ``checkpoint``: a checkpoint file, a run folder (its best.pt) or an already loaded model
    (cvcore.engine.checkpoint.load_model, ``weights_only=True``). ``eval_config`` None takes the
    checkpoint's own (:func:`checkpoint_eval_config`); pass one to change the decoding. The
    dataset is the split with the run's eval transforms (cvcore.engine.run.prediction_dataset,
    which raises ValueError when the snapshot's task or classes are not the model's).
    ``indices`` restricts prediction to those dataset positions (a shard). Nothing runs until
    ``.batches`` is iterated.
    """
    from cvcore.engine.checkpoint import LoadedModel, load_model
    from cvcore.engine.run import prediction_dataset

    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint)
    dataset = prediction_dataset(loaded.meta, snapshot, split)
    config = checkpoint_eval_config(loaded.meta) if eval_config is None else eval_config
    unreadable: list[Unreadable] = []
    batches = predict(
        loaded.model,
        dataset,
        task=loaded.meta["task"],
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        indices=indices,
        amp=amp,
        on_unreadable=unreadable.append,
        **decode_options(config),
    )
    return CheckpointPredictions(
        model=loaded.model,
        meta=loaded.meta,
        path=loaded.path,
        dataset=dataset,
        eval_config=config,
        batches=batches,
        unreadable=unreadable,
    )


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
    on_unreadable: Callable[[Unreadable], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Run ``model`` over ``dataset`` (or its ``indices``) and yield prediction record batches.

    ``dataset``: a cvcore.data.torch_dataset dataset with eval transforms (it must expose
    ``image_ids``, and for detection ``sizes`` = [(height, width)] of the original images).
    Classification rows: image_id, top-1 category_id and score, and ``scores`` float32[K]
    (softmax). Detection rows: one per kept box, score >= ``score_threshold``, at most
    ``max_detections`` per image (highest scores), boxes xyxy in original pixels. A
    ``Postprocessable`` detector (cvcore.models.capabilities: YOLOv1, Faster R-CNN, FCOS) decodes
    with the same score threshold, NMS IoU (``None`` keeps the model's) and detection cap, so its
    own decoding never drops boxes the evaluation asked for. Undecodable images (samples that are None) are skipped and
    each is passed to ``on_unreadable`` as an :class:`Unreadable` (its file and the decoder's
    error), so a caller can report them. One batch is yielded per loader batch, possibly with
    zero rows. The model is moved to ``device`` and put in eval mode; torch's CPU threads are
    sized once per process (cvcore.engine.device.configure_threads).
    """
    if task not in TABLE:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TABLE)}")
    for attr in ("image_ids",) + (("sizes",) if task == "detection" else ()):
        if not hasattr(dataset, attr):
            raise ValueError(
                f"predict needs a dataset with .{attr} (a cvcore.data.torch_dataset dataset), got {type(dataset).__name__}"
            )
    configure_threads()
    device = resolve_device(device) if isinstance(device, str) else device
    precision = choose_precision(device, amp=amp)
    loader = prediction_loader(
        dataset, batch_size=batch_size, num_workers=num_workers, indices=indices, pin_memory=device.type == "cuda"
    )
    image_ids = np.asarray(dataset.image_ids, dtype=np.int64)
    model.to(device).eval()
    if task == "detection" and isinstance(model, Postprocessable):
        model.set_postprocess(score_threshold=score_threshold, nms_iou=nms_iou, max_detections=max_detections)
    with torch.inference_mode():
        for index, images, failed in loader:
            for i, reason in failed:
                record = Unreadable(image_id=int(image_ids[i]), file_name=_file_of(dataset, i), reason=reason)
                log.warning(
                    "image %d (%s) cannot be read, it has no prediction: %s", record.image_id, record.file_name, reason
                )
                if on_unreadable is not None:
                    on_unreadable(record)
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
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    indices: Sequence[int] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A sequential loader yielding ``(dataset indices: np.ndarray[int64], images: list[float32[3, H, W]],
    failed: list[(dataset index, reason)])``; ``failed`` are the samples that could not be read."""
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
    scores = pa.LargeListArray.from_arrays(
        pa.array(np.arange(0, b * k + 1, k, dtype=np.int64)), pa.array(probs.reshape(-1))
    )
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
    arrays = [
        pa.array(np.concatenate(v)) if v else pa.array([], type=t)
        for v, t in zip(cols.values(), schema.arrow_schema("detections").types)
    ]
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


def check_predictions_target(path: str | Path) -> None:
    """Raise ValueError unless a predictions file may be written at ``path`` (writes nothing).

    Fine: nothing there yet, or a predictions Parquet file (the columns of the detections or
    classifications table), which is replaced. Anything else is refused in one line naming it and
    never overwritten: a checkpoint, a snapshot's table, any other file of the user's, a folder,
    a FIFO or device (``/dev/null`` is replaced by a rename, not written to), a link to any of
    these or a dangling link. Only the Parquet footer of a regular file is read.
    """
    if not existing_output(path, kind="predictions file"):
        return
    try:
        columns = pq.read_schema(path).names
    except (pa.ArrowException, OSError):
        columns = None  # not Parquet (or unreadable): not ours to replace
    if not any(columns == schema.TABLES[table].names() for table in TABLE.values()):
        raise ValueError(
            f"refusing to overwrite {path}: it exists and is not a cvflow predictions file; choose another path or remove it yourself"
        )


def write_predictions(
    batches: Iterable[pa.RecordBatch],
    path: str | Path,
    *,
    task: Task | None = None,
    unreadable: Sequence[Unreadable] = (),
) -> Path:
    """Stream ``batches`` into one Parquet file at ``path``, atomically (temp sibling, then rename).

    The schema is the first batch's; ``task`` gives it when ``batches`` may be empty (an empty
    iterable without ``task`` is a ValueError). Memory holds at most one row group
    (:func:`row_groups`). A failure midway leaves no partial file. ``unreadable`` (read once the
    last batch is written, so the list ``predict_checkpoint`` fills may be passed) goes into the
    footer's ``cvflow.unreadable`` entry. Temporaries of this file left by a killed writer over an
    hour ago are removed first (cvcore.io.remove_temporaries). An existing ``path`` is replaced
    only when it is a predictions file (:func:`check_predictions_target`; ValueError otherwise).
    """
    path = Path(path)
    check_predictions_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_temporaries(path.parent, of=path.name, older_than_s=ORPHAN_AGE_S)
    with atomic_path(path) as tmp:
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
            if unreadable:
                writer.add_key_value_metadata(unreadable_metadata(unreadable))
        finally:
            if writer is not None:
                writer.close()
    return path


def shard_indices(n: int, *, num_shards: int, shard: int) -> range:
    """The contiguous dataset indices of ``shard`` (0-based) when ``n`` items split into ``num_shards``."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside 0..{num_shards - 1}")
    per = math.ceil(n / num_shards)
    return range(min(n, shard * per), min(n, (shard + 1) * per))


class _Indexed(Dataset):
    """``dataset`` restricted to ``indices``, each sample paired with its index in ``dataset``.

    A sample that is None (the image could not be read) comes with the reason instead.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        index = int(self.indices[i])
        sample = self.dataset[index]
        return index, sample, (None if sample is not None else unreadable_reason(self.dataset, index))


def unreadable_reason(dataset: Dataset, index: int) -> str:
    """Why sample ``index`` of a cvcore dataset is None: the decoder's error on its file, in one line.

    The datasets log and swallow the error (training skips such images); reading the file once
    more here recovers the message. Only images that already failed are read again.
    """
    from cvcore.data.torch_dataset import load_image

    refused = getattr(dataset, "refused", None) or {}
    if index in refused:  # a file name leading outside the image root: never opened
        return refused[index][1][:REASON_CHARS]
    path = _file_of(dataset, index)
    if not path:
        return "the dataset returned no sample"
    try:
        load_image(path)
    except (OSError, RuntimeError, ValueError) as exc:
        return " ".join(f"{type(exc).__name__}: {exc}".split())[:REASON_CHARS]
    return "the dataset returned no sample (the file decodes now: it may have changed)"


def _file_of(dataset: Dataset, index: int) -> str:
    refused = getattr(dataset, "refused", None) or {}
    if index in refused:
        return refused[index][0]  # the row's file name (its path was never made)
    paths = getattr(dataset, "paths", None)
    return str(paths[index]) if paths is not None else ""


def _collate_indexed(
    batch: list[tuple[int, Any, str | None]],
) -> tuple[np.ndarray, list[torch.Tensor], list[tuple[int, str]]]:
    kept = [(i, s) for i, s, _ in batch if s is not None]  # undecodable images are dropped here...
    failed = [(i, reason) for i, s, reason in batch if s is None]  # ...and reported
    index = np.array([i for i, _ in kept], dtype=np.int64)
    return index, [as_float_image(s[0]) for _, s in kept], failed


def as_float_image(image: torch.Tensor) -> torch.Tensor:
    """A plain float32 tensor in [0, 1]: uint8 images are scaled, float ones passed through.

    tv_tensors are unwrapped to plain tensors so models see ordinary torch.Tensor inputs.
    """
    image = torch.as_tensor(image).as_subclass(torch.Tensor)
    return TF.to_dtype(image, torch.float32, scale=True) if image.dtype == torch.uint8 else image.float()
