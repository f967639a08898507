"""Data-parallel training on ``torch.distributed``, launched by torchrun's own launcher.

How a run trains on N processes (docs/ARCHITECTURE.md §5; README "Scaling out"):

- **Launch.** :func:`launch` hands an entry point to ``torch.distributed.launcher.api.elastic_launch``,
  the launcher behind ``torchrun``: ``train.devices`` processes on this machine (one per GPU, or
  CPU processes), with torchrun's c10d rendezvous on a free local port (``torchrun --standalone``).
  Several machines (:class:`Nodes`): every machine runs the same command with its ``node_rank``;
  they meet at ``rdzv_endpoint`` (``host:port`` of node 0, which serves the rendezvous store).
  That uses torchrun's ``static`` rendezvous, the one that honours ``--node-rank`` (torchrun's
  c10d rendezvous numbers nodes by arrival), so global rank 0 — the only rank that writes the run
  folder and reports to MLflow — is always on node 0, where ``cvflow train`` runs the pipeline.
  A failed rank makes the launcher stop the others; :class:`RankFailed` names the first failing
  rank and its error. Nothing is restarted (``max_restarts=0``): ``--resume`` continues a run.
- **Backend.** NCCL on GPUs (rank ``r`` on ``cuda:<local rank>``), gloo on CPU. Every collective
  has ``train.dist_timeout_s``: a rank that stops answering fails the others after that long
  instead of hanging them (on one machine the launcher already stops them within a second).
- **Batches.** ``train.batch_size`` is the global batch: each of the ``W`` ranks trains on
  ``batch_size / W`` images per step (it must divide). The train sampler is
  ``torch.utils.data.DistributedSampler`` (seed ``train.seed``, reshuffled from ``seed + epoch``,
  tail dropped to a multiple of ``W``) in every run, one process included: rank ``r`` takes
  positions ``r, r + W, ...`` of one permutation, so the union of the ranks' step-``s`` batches
  is the ``s``-th batch of a one-process run with the same global batch, and DDP's mean of the
  ranks' gradients is that batch's gradient (exactly for models without batch-norm; batch-norm
  statistics are per device unless ``train.sync_bn``, GPU only). Per-sample augmentation draws
  from ``(augment.seed, epoch, dataset index)``, whatever the rank or worker.
- **Learning rate.** The LR is the one for the global batch: keep ``train.lr`` when only the
  number of devices changes (same global batch). When the global batch grows ``k`` times, the
  linear scaling rule (Goyal et al. 2017: multiply the LR by ``k``, with warm-up) is the usual
  start for SGD; AdamW usually needs less (``sqrt(k)``).
- **Validation** runs on every rank over a ``1/W`` shard of the val set; rank 0 gathers the
  predictions, puts them back in dataset order and scores them once, so the numbers equal a
  one-process validation of the same weights; the metrics are broadcast to every rank.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
import torch.distributed as dist
from torch import nn

from cvcore.engine.device import THREADS_ENV, available_cpus, resolve_device

log = logging.getLogger(__name__)

BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
FAILURES_ENV = "CVFLOW_RANK_FAILURES"  # a folder where a failing rank writes its error (set by launch)
RDZV_TIMEOUT_S = 900  # how long machines wait for each other at the start (torchrun's default)


@dataclass(frozen=True)
class Nodes:
    """The machines of a run: ``nnodes`` of them, this one is ``node_rank`` (0 = the one that writes).

    ``rdzv_endpoint``: ``host:port`` of node 0, reachable from every node (node 0 listens there);
    required when ``nnodes > 1``.
    """

    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise ValueError(f"--nnodes must be at least 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(
                f"--node-rank must be in 0..{self.nnodes - 1} for {self.nnodes} node(s), got {self.node_rank}"
            )
        if self.nnodes > 1:
            host, _, port = (self.rdzv_endpoint or "").rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(
                    f"--rdzv-endpoint must be HOST:PORT of node 0 when --nnodes > 1, got {self.rdzv_endpoint!r}"
                )


class RankFailed(RuntimeError):
    """A rank of a distributed run failed; the message names the first failing rank and its error."""


def devices_per_node(devices: int | Literal["auto"], device: str = "auto") -> int:
    """How many processes to start on this machine for ``train.devices`` on ``train.device``.

    ``"auto"``: every visible GPU when the run is on CUDA, else 1. An integer is used as given;
    on CUDA it may not exceed the visible GPUs. ValueError (one line) otherwise, or when
    ``device`` names one GPU (``cuda:1``) and more than one process is asked for.
    """
    on_cuda = resolve_device(device).type == "cuda"
    if devices == "auto":
        return max(1, torch.cuda.device_count()) if on_cuda else 1
    n = int(devices)
    if n < 1:
        raise ValueError(f"train.devices must be a positive number or 'auto', got {devices!r}")
    if on_cuda:
        if n > 1 and device.startswith("cuda:"):
            raise ValueError(
                f"train.device {device!r} names one GPU, but train.devices is {n}: use device auto or cuda"
            )
        if n > torch.cuda.device_count():
            raise ValueError(f"train.devices is {n}, but {torch.cuda.device_count()} CUDA GPU(s) are visible here")
    return n


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world_size``, its ``device``.

    Every method also works in a one-process run (``world_size == 1``), where collectives are
    the identity, so the engine has one code path.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, reports and talks to the callbacks."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """``values`` summed over the ranks (float64, same keys in the same order on every rank)."""
        if not self.distributed or not values:
            return dict(values)
        keys = list(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(keys, t.tolist()))

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar tensor over the ranks, as a Python float."""
        if not self.distributed:
            return float(value.item())
        t = value.detach().reshape(1).to(self.device, torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (picklable) in rank order on rank 0; None on the other ranks."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shard(self, n: int) -> range:
        """This rank's positions of ``n`` items: ``rank, rank + world_size, ...``."""
        return range(self.rank, n, self.world_size)


def single_process(device: torch.device) -> Dist:
    """The :class:`Dist` of a run that does not leave this process."""
    return Dist(rank=0, world_size=1, local_rank=0, device=device)


def init_rank(device: str = "auto", *, timeout_s: float) -> Dist:
    """Join the process group of a launched run (RANK, WORLD_SIZE, LOCAL_RANK from the launcher).

    NCCL with rank ``r`` on ``cuda:<LOCAL_RANK>`` when ``device`` resolves to CUDA, else gloo on
    CPU; every collective times out after ``timeout_s`` seconds.
    """
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    on = resolve_device(device)
    if on.type == "cuda":
        on = torch.device("cuda", local)
        torch.cuda.set_device(on)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=BACKENDS[on.type], timeout=timedelta(seconds=timeout_s), device_id=on if on.type == "cuda" else None
        )
    return Dist(rank=rank, world_size=world, local_rank=local, device=on)


def close_rank() -> None:
    """Leave the process group (at the end of a rank's work, error or not)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def run_rank(work: Callable[[Dist], Any], *, device: str = "auto", timeout_s: float) -> Any:
    """The body of a launched rank: :func:`init_rank`, ``work(dist)``, :func:`close_rank`.

    A rank that fails writes its error (with the time) for :func:`launch` before it leaves the
    process group: the other ranks fail a moment later in their collectives, and the launcher
    may see their failures first. A KeyboardInterrupt or SystemExit is re-raised as a
    RuntimeError naming it (the launcher records only ``Exception``s).
    """
    d = init_rank(device, timeout_s=timeout_s)
    try:
        return work(d)
    except BaseException as exc:
        _record_failure(d.rank, exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
        raise
    finally:
        close_rank()


def _record_failure(rank: int, exc: BaseException) -> None:
    folder = os.environ.get(FAILURES_ENV)
    if not folder or not os.path.isdir(folder):
        return
    from cvcore.io import atomic_write

    record = {
        "rank": rank,
        "time": time.time(),
        "message": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
    }
    with atomic_write(Path(folder) / f"rank-{rank}.json", "w") as fh:
        json.dump(record, fh)


def prepare_model(model: nn.Module, d: Dist, *, sync_bn: bool) -> nn.Module:
    """``model`` on ``d.device``, its batch-norm layers made SyncBatchNorm when ``sync_bn`` (and W > 1).

    torch's SyncBatchNorm runs on CUDA only: ValueError on CPU. Returns the (possibly new) module;
    its parameters are the same objects, so an optimizer may be built after this call.
    """
    model = model.to(d.device)
    if sync_bn and d.distributed:
        if d.device.type != "cuda":
            raise ValueError(
                "train.sync_bn needs GPUs: torch's SyncBatchNorm runs on CUDA only; set sync_bn false on CPU"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    """``model`` in DistributedDataParallel when the run has several ranks, else as it is.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts equal.
    """
    if not d.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and/or ``torch.compile`` (whose state dict has no ``module.`` /
    ``_orig_mod.`` prefixes)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def threads_per_rank(nproc: int) -> int:
    """Intra-op threads for each of ``nproc`` CPU processes on this machine: the CPUs shared out, at least 1."""
    return max(1, available_cpus() // max(1, nproc))


def launch(
    entrypoint: Callable[..., Any], args: tuple[Any, ...], *, nproc: int, nodes: Nodes = Nodes()
) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` in ``nproc`` processes per node through torchrun's launcher.

    ``entrypoint`` must be a module-level function (the processes are spawned and import it).
    Returns ``{global rank: return value}`` of this node's ranks. With ``nproc`` > 1 the processes
    get ``CVFLOW_NUM_THREADS`` = this machine's CPUs / ``nproc`` (as torchrun sets OMP_NUM_THREADS)
    unless the user set it or OMP_NUM_THREADS / MKL_NUM_THREADS. Raises :class:`RankFailed` naming the first failing rank and its
    error (a Python exception's type and message, or the signal that killed it).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nodes.nnodes > 1:
        backend, endpoint, run_id = "static", nodes.rdzv_endpoint, "cvflow-train"
        configs: dict[str, Any] = {"rank": nodes.node_rank, "timeout": RDZV_TIMEOUT_S}
    else:
        backend, endpoint, run_id = "c10d", "localhost:0", f"cvflow-{uuid.uuid4().hex[:12]}"
        configs = {"timeout": RDZV_TIMEOUT_S}
    config = LaunchConfig(
        min_nodes=nodes.nnodes,
        max_nodes=nodes.nnodes,
        nproc_per_node=nproc,
        run_id=run_id,
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        rdzv_configs=configs,
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    failures = tempfile.mkdtemp(prefix="cvflow-rank-failures-")
    env = {FAILURES_ENV: failures}
    if nproc > 1 and not any(os.environ.get(v) for v in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        env[THREADS_ENV] = str(threads_per_rank(nproc))
    try:
        with _environ(env), _quiet_launcher():
            return elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as exc:
        raise _rank_failed(exc, world=nproc * nodes.nnodes, recorded=_read_failures(failures)) from None
    finally:
        shutil.rmtree(failures, ignore_errors=True)


# How a rank fails when another rank died under it: its collective loses the peer or times out.
_SECONDARY = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "distbackenderror",
    "timed out",
    "timeout",
    "aborted",
)


def _read_failures(folder: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(Path(folder).glob("rank-*.json")):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(path.read_text()))
    return out


def _rank_failed(exc: Any, *, world: int, recorded: list[dict[str, Any]] = ()) -> RankFailed:
    """The first failing rank's error: the earliest failure that is not a collective losing its peer.

    A rank that raised or was killed makes the others fail in their next collective (gloo:
    "Connection closed by peer"), and the launcher may see those first. The candidates are the
    errors the ranks recorded themselves (:func:`run_rank`, timed to the microsecond) and the
    launcher's failures (which also know the ranks killed by a signal); secondary failures are
    passed over unless nothing else is known.
    """
    candidates: list[tuple[float, int, str, str | None]] = []  # (time, rank, cause, traceback)
    for r in recorded:
        candidates.append((float(r["time"]), int(r["rank"]), " ".join(str(r["message"]).split()), r.get("traceback")))
    known = {c[1] for c in candidates}
    for rank, failure in exc.failures.items():
        if rank not in known:
            why, stack = _failure_text(failure)
            candidates.append((float(failure.timestamp), rank, why, stack))
    candidates.sort(key=lambda c: c[0])
    causes = [c for c in candidates if not any(s in c[2].lower() for s in _SECONDARY)]
    _, rank, why, stack = (causes or candidates)[0]
    if stack:
        log.error("rank %d failed:\n%s", rank, stack)
    failure = exc.failures.get(rank)
    where = f"pid {failure.pid}, exit code {failure.exitcode}" if failure is not None else "stopped by the launcher"
    others = len({c[1] for c in candidates} | set(exc.failures)) - 1
    tail = f" ({others} other rank(s) failed after it)" if others else ""
    return RankFailed(f"rank {rank} of {world} failed ({where}): {why}{tail}")


def _failure_text(failure: Any) -> tuple[str, str | None]:
    """(one-line cause, Python traceback or None) of a launcher's ProcessFailure."""
    message = failure.message
    stack = None
    if isinstance(message, dict):  # an exception recorded by the rank: {"message": "Type: text", "extraInfo": {...}}
        stack = message.get("extraInfo", {}).get("py_callstack")
        message = message.get("message", "")
    return (" ".join(str(message).split()) or f"exit code {failure.exitcode}"), stack


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the spawned processes, then put the old values back."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """The launcher logs every failure with its traceback at ERROR (and start-up chatter at
    WARNING); :func:`launch` reports the first failure itself, once."""
    logger = logging.getLogger("torch.distributed.elastic")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
