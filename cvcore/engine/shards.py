"""Prediction shards that say what they hold, on a local disk or an object store.

A split's predictions are one folder of ``part-<shard:05d>.parquet`` files (docs/ARCHITECTURE.md §3). Each
file is streamed from record batches (at most one row group in memory), written under a hidden
temporary name and renamed when complete, and carries a :class:`ShardKey` in its Parquet
key-value metadata: the checkpoint's digest, the snapshot's digest, the split, the shard index and
the shard count. Reading a file's footer alone therefore tells a finished shard of *this* model
and data (reuse it) from a stale one (another model, data or sharding: predict again), and a
crash mid-shard leaves only the hidden temporary file, which ``part-*.parquet`` never matches.
That is what lets an interrupted evaluation resume with only the missing shards.

Folders are local paths or URIs of an object store (cvcore.io.Location: ``s3://``, ``gs://``,
``file://``, configured by each store's environment variables), so the same URI works for writing
and for evaluation (``pl.scan_parquet``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cvcore import schema
from cvcore.engine.infer import (
    TABLE,
    Unreadable,
    row_groups,
    unreadable_frame,
    unreadable_from_metadata,
    unreadable_metadata,
)
from cvcore.io import ORPHAN_AGE_S, Location, as_location, atomic_output, delete_quietly

log = logging.getLogger(__name__)

Task = Literal["detection", "classification"]
META_KEY = b"cvflow.shard"  # Parquet key-value metadata entry holding the shard's JSON record
SHARD_GLOB = "part-*.parquet"
# Only names write_shard makes: other tools' part files (Spark's part-00000-<uuid>.snappy.parquet)
# are not ours to read, reuse or delete.
SHARD_NAME = re.compile(r"^part-\d{5}\.parquet$")
TEMP_NAME = re.compile(
    r"^\.part-\d{5}\.parquet\.[0-9a-f]{32}\.tmp$"
)  # write_shard's temporaries (cvcore.io.atomic_output)


@dataclass(frozen=True)
class ShardKey:
    """What a shard file holds: which model on which data, and which slice of the split.

    ``checkpoint_sha256``: sha256 hex of the checkpoint file; ``snapshot_digest``: the
    snapshot's content digest; shards are contiguous image ranges (``shard`` of ``num_shards``).
    """

    checkpoint_sha256: str
    snapshot_digest: str
    split: str
    shard: int
    num_shards: int
    task: Task

    def __post_init__(self):
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard {self.shard} is outside 0..{self.num_shards - 1}")

    def same_set(self, other: "ShardKey") -> bool:
        """True when ``other`` is a shard of the same predictions (model, data, split, sharding)."""
        return asdict(self) | {"shard": 0} == asdict(other) | {"shard": 0}


@dataclass(frozen=True)
class ShardFile:
    """A complete shard file: where it is, what it holds, how many images and rows."""

    uri: str
    key: ShardKey
    num_images: int  # images of the split in this shard (undecodable ones included)
    num_rows: int  # prediction rows (detections, or one per classified image)


def shard_name(shard: int) -> str:
    """``part-<shard:05d>.parquet``: the file name of shard ``shard`` (docs/ARCHITECTURE.md §3)."""
    if shard < 0:
        raise ValueError(f"shard must be >= 0, got {shard}")
    return f"part-{shard:05d}.parquet"


def write_shard(
    batches: Iterable[pa.RecordBatch],
    folder: str | Path | Location,
    *,
    key: ShardKey,
    num_images: int,
    unreadable: Sequence[Unreadable] = (),
) -> ShardFile:
    """Stream ``batches`` (the task's predictions schema) into ``<folder>/part-<shard>.parquet``.

    ``unreadable``: the shard's images that could not be read (read after the last batch, so the
    list cvcore.engine.infer.predict_checkpoint fills may be passed), recorded in the footer's
    ``cvflow.unreadable`` entry for evaluation (:func:`read_unreadable_shards`).

    Rows are gathered into row groups by cvcore.engine.infer.row_groups (as write_predictions
    does), so memory holds one row group, never the shard.
    The file is written under a hidden temporary name and moved into place when complete (an
    atomic rename locally; a server-side copy on object stores, where an object appears whole or
    not at all); an exception midway removes the temporary file and re-raises.
    """
    target = as_location(folder).child(shard_name(key.shard))
    record = {**asdict(key), "num_images": int(num_images)}
    arrow_schema = schema.arrow_schema(TABLE[key.task]).with_metadata({META_KEY: json.dumps(record).encode()})
    rows = 0
    with atomic_output(target) as stream, pq.ParquetWriter(stream, arrow_schema) as writer:
        for table in row_groups(_checked(batches, arrow_schema, file=target.uri, table=TABLE[key.task])):
            writer.write_table(table)
            rows += table.num_rows
        if unreadable:
            writer.add_key_value_metadata(unreadable_metadata(unreadable))
    log.info("%s: %d rows for %d images", target.uri, rows, num_images)
    return ShardFile(uri=target.uri, key=key, num_images=int(num_images), num_rows=rows)


def _checked(
    batches: Iterable[pa.RecordBatch], expected: pa.Schema, *, file: str, table: str
) -> Iterator[pa.RecordBatch]:
    """``batches``, each checked against ``expected`` (metadata aside); ValueError naming ``file`` otherwise."""
    for batch in batches:
        if batch.schema.remove_metadata() != expected.remove_metadata():
            raise ValueError(f"{file}: a batch does not have the {table} schema:\n{batch.schema}")
        yield batch


def read_shard(file: str | Path | Location) -> ShardFile | None:
    """The shard record of a complete shard file, from its footer alone.

    None when the file does not exist or its footer is not a cvflow shard record (not Parquet,
    no or a malformed ``cvflow.shard`` entry): it is not a finished shard of anything, and the
    caller predicts it again. Errors reaching the file (an object store's network or permission
    error: an OSError) propagate, since a shard that cannot be read now is not known to be stale.
    """
    loc = as_location(file)
    if loc.fs.get_file_info(loc.path).type != pafs.FileType.File:
        return None
    meta = _footer(loc)
    return None if meta is None else _shard_record(loc, meta)


def _footer(loc: Location) -> pq.FileMetaData | None:
    """The Parquet footer of ``loc``; None when the file is not Parquet. OSErrors propagate."""
    with loc.fs.open_input_file(loc.path) as fh:
        try:
            return pq.read_metadata(fh)
        except pa.ArrowInvalid as exc:  # not Parquet (a foreign or damaged file); I/O errors are OSErrors and pass
            log.warning("%s is not a Parquet file (%s)", loc.uri, exc)
            return None


def _shard_record(loc: Location, meta: pq.FileMetaData) -> ShardFile | None:
    """The ShardFile a footer describes; None when its ``cvflow.shard`` entry is missing or malformed."""
    try:
        record = json.loads((meta.metadata or {})[META_KEY])
        num_images = int(record.pop("num_images"))
        return ShardFile(uri=loc.uri, key=ShardKey(**record), num_images=num_images, num_rows=meta.num_rows)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("%s holds no valid cvflow shard record (%r); it will be predicted again", loc.uri, exc)
        return None


def read_unreadable_shards(files: Iterable[str | Path | Location]) -> pl.DataFrame:
    """The images recorded as unreadable in prediction files' footers (local paths or URIs).

    Frame of image_id int64, file_name str, reason str (cvcore.engine.infer.unreadable_frame);
    empty when none was. Files written before cvflow recorded them have no entry (none).
    """
    records = []
    for file in files:
        loc = as_location(file)
        meta = _footer(loc)
        if meta is not None:
            records += unreadable_from_metadata(meta.metadata)
    return unreadable_frame(records)


def find_complete_shard(folder: str | Path | Location, key: ShardKey) -> ShardFile | None:
    """The finished file of shard ``key`` in ``folder``, or None when it must be (re)computed."""
    loc = as_location(folder)
    found = read_shard(loc.child(shard_name(key.shard)))
    return found if found is not None and found.key == key else None


def list_shards(folder: str | Path | Location) -> list[Location]:
    """The ``part-<5 digits>.parquet`` files directly in ``folder`` (sorted; none if it is missing).

    Only the names :func:`shard_name` makes; other ``part-*`` files (Spark's, say) are not listed.
    """
    loc = as_location(folder)
    if loc.fs.get_file_info(loc.path).type != pafs.FileType.Directory:
        return []
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return [loc.child(n) for n in names if SHARD_NAME.match(n)]


def check_predictions_folder(
    folder: str | Path | Location, *, checkpoint_sha256: str, split: str, snapshot_digest: str | None = None
) -> list[ShardFile]:
    """The cvflow shard files in ``folder``, when every one is a prediction of this model on this split.

    A predictions folder is reused only for the predictions it already holds: the shards of the
    checkpoint with sha256 ``checkpoint_sha256`` on ``split`` of the snapshot ``snapshot_digest``
    (of any snapshot when None: the command's pre-flight before a source is ingested), in any
    shard count. Anything else there is output someone owns (an earlier evaluation's MLflow run
    points at it), so ValueError in one line naming the folder and what it holds, saying to pass
    another predictions folder or delete it: a cvflow shard of another model, snapshot or split
    (its checkpoint and snapshot digests), one with a malformed ``cvflow.shard`` record, or a
    ``part-NNNNN.parquet`` cvflow did not write. Nothing is deleted here; errors reaching a file
    propagate. A missing folder holds nothing: ``[]``.
    """
    loc = as_location(folder)
    found = []
    for file in list_shards(loc):
        try:
            meta = _footer(file)
        except FileNotFoundError:
            continue  # removed since it was listed (another run's clean-up): nothing to check
        if meta is None or META_KEY not in (meta.metadata or {}):
            raise ValueError(f"{file.uri} is not a cvflow shard; choose an empty folder for the predictions")
        shard = _shard_record(file, meta)
        if shard is None:
            raise ValueError(
                f"predictions folder {loc.uri} holds {file.uri} with a malformed cvflow shard record; "
                "pass another predictions folder (--predictions) or delete that file"
            )
        key = shard.key
        if (
            key.checkpoint_sha256 != checkpoint_sha256
            or key.split != split
            or snapshot_digest not in (None, key.snapshot_digest)
        ):
            this = f"checkpoint {checkpoint_sha256[:12]}, snapshot {(snapshot_digest or '?')[:12]}, split {split!r}"
            raise ValueError(
                f"predictions folder {loc.uri} holds another evaluation's predictions ({file.path.rsplit('/', 1)[-1]}: "
                f"checkpoint {key.checkpoint_sha256[:12]}, snapshot {key.snapshot_digest[:12]}, split {key.split!r}; this one: {this}); "
                "pass another predictions folder (--predictions) or delete it"
            )
        found.append(shard)
    return found


def remove_stale_shards(folder: str | Path | Location, *, key: ShardKey) -> list[str]:
    """Delete the shard files in ``folder`` of ``key``'s model and data that are not shards of ``key``'s set.

    ``key`` is any shard of the predictions about to be made. The folder must hold only shards
    of the same checkpoint, snapshot and split (:func:`check_predictions_folder`, ValueError
    before anything is deleted otherwise); of those, files of another shard count (or under
    another shard's name) would be read together with the new ones by
    ``pl.scan_parquet(folder / "part-*.parquet")``, and are deleted: they are this model's
    predictions of this data, made again now. Errors reaching a file propagate (nothing is
    deleted on a guess). Returns the deleted URIs.
    """
    loc = as_location(folder)
    ours = check_predictions_folder(
        loc, checkpoint_sha256=key.checkpoint_sha256, split=key.split, snapshot_digest=key.snapshot_digest
    )
    removed = []
    for shard in ours:
        name = shard.uri.rsplit("/", 1)[-1]
        file = loc.child(name)
        if not shard.key.same_set(key) or name != shard_name(shard.key.shard):
            delete_quietly(file)
            removed.append(file.uri)
    if removed:
        log.info("removed %d shard file(s) of another sharding of these predictions: %s", len(removed), removed)
    return removed


def remove_orphan_temporaries(folder: str | Path | Location, *, older_than_s: float = ORPHAN_AGE_S) -> list[str]:
    """Delete write_shard's hidden temporary files in ``folder`` last modified over ``older_than_s`` ago.

    A killed run leaves ``.part-NNNNN.parquet.<uuid>.tmp`` behind (no reader ever matches it, but
    it takes space). Younger ones may be written right now by a concurrent run and are kept, as
    are files whose store reports no modification time. Returns the deleted URIs.
    """
    loc = as_location(folder)
    if loc.fs.get_file_info(loc.path).type != pafs.FileType.Directory:
        return []
    cutoff_ns = time.time_ns() - int(older_than_s * 1e9)
    removed = []
    for info in loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True)):
        if (
            info.type == pafs.FileType.File
            and TEMP_NAME.match(info.base_name)
            and info.mtime_ns is not None
            and info.mtime_ns < cutoff_ns
        ):
            delete_quietly(loc.child(info.base_name))
            removed.append(loc.child(info.base_name).uri)
    if removed:
        log.info("removed %d temporary file(s) of killed runs: %s", len(removed), removed)
    return removed
