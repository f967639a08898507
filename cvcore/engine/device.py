"""Device, mixed-precision and CPU-thread choices (docs/ARCHITECTURE.md §5: cuda when present, GPU runs use AMP)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else is parsed as given.

    Raises ValueError for an unparsable name, or a CUDA device asked for on a machine without one.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {spec!r} ({exc}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but no CUDA GPU is available here; use --device cpu")
    return device


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: ``dtype`` None means full float32 (no autocast).

    ``use_scaler`` is true only for float16, whose small range needs loss scaling; bfloat16 has
    float32's range and trains without it.
    """

    dtype: torch.dtype | None
    use_scaler: bool

    def autocast(self, device: torch.device):
        """The autocast context for ``device`` (a disabled one when dtype is None)."""
        return torch.autocast(
            device_type=device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )


def choose_precision(device: torch.device, *, amp: bool) -> Precision:
    """bf16 on GPUs that support it, else fp16 with a GradScaler; float32 on CPU or when amp is off.

    CPU autocast exists but is slower than float32 on most CPUs and changes results, so CPU runs
    stay in float32 (the config's ``amp`` is documented as ignored on CPU).
    """
    if not amp or device.type != "cuda":
        return Precision(dtype=None, use_scaler=False)
    if torch.cuda.is_bf16_supported():
        return Precision(dtype=torch.bfloat16, use_scaler=False)
    return Precision(dtype=torch.float16, use_scaler=True)


def make_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A GradScaler that is a no-op unless fp16 needs it (so checkpoints always have its state)."""
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=precision.use_scaler)


# --- CPU threads -------------------------------------------------------------------------------
# torch sizes its intra-op thread pool to the machine's cores, not to the CPUs this process may
# use: in a container with a 2-CPU quota on a 64-core host, or beside another training process
# pinned to other cores, 64 threads share 2 CPUs and every step waits on the slowest of them.

THREADS_ENV = "CVFLOW_NUM_THREADS"
_threads_configured = False


def available_cpus(
    *,
    affinity: set[int] | None = None,
    proc_cgroup: str | Path = "/proc/self/cgroup",
    cgroup_root: str | Path = "/sys/fs/cgroup",
) -> int:
    """How many CPUs this process can really use: ``min(len(affinity), ceil(cgroup v2 quota))``, at least 1.

    ``affinity``: the CPUs the scheduler lets the process run on (``os.sched_getaffinity(0)``
    when None; ``os.cpu_count()`` where there is no such call). The quota is the tightest
    ``cpu.max`` (``"<quota_us> <period_us>"`` or ``"max <period_us>"``) of the process's cgroup v2
    and its ancestors under ``cgroup_root``; the cgroup is the ``0::<path>`` line of
    ``proc_cgroup``. Missing or unreadable files mean no quota (cgroup v1 hosts, macOS).
    """
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cpus = max(1, len(affinity))
    quota = cgroup_cpu_quota(proc_cgroup=proc_cgroup, cgroup_root=cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def cgroup_cpu_quota(
    *, proc_cgroup: str | Path = "/proc/self/cgroup", cgroup_root: str | Path = "/sys/fs/cgroup"
) -> float | None:
    """The cgroup v2 CPU limit of this process in CPUs (quota / period, e.g. 1.5), None when unlimited.

    Every level from the process's cgroup up to ``cgroup_root`` may set a ``cpu.max``; the
    smallest applies.
    """
    group = _cgroup_v2_path(Path(proc_cgroup))
    if group is None:
        return None
    root = Path(cgroup_root)
    folder = root / group.lstrip("/")
    limits = []
    for level in (folder, *folder.parents):
        limit = _cpu_max(level / "cpu.max")
        if limit is not None:
            limits.append(limit)
        if level == root:
            break
    return min(limits) if limits else None


def _cgroup_v2_path(proc_cgroup: Path) -> str | None:
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):  # the unified (v2) hierarchy
            return line[3:].strip() or "/"
    return None


def _cpu_max(path: Path) -> float | None:
    """``cpu.max`` as CPUs (quota / period); None for ``max``, a missing file or an unparsable one."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = float(fields[0]), float(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def thread_count(
    *, environ: dict[str, str] | None = None, available: int | None = None, current: int | None = None
) -> int | None:
    """The intra-op thread count to set, or None to leave torch's own.

    ``CVFLOW_NUM_THREADS`` (a positive integer) wins. Otherwise, when the user set
    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (torch follows those), None; else torch's current
    count capped at :func:`available_cpus` (never raised). ValueError naming the variable for a
    value that is not a positive integer.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{THREADS_ENV}={raw!r}: expected a positive number of threads")
        return n
    if environ.get("OMP_NUM_THREADS") or environ.get("MKL_NUM_THREADS"):
        return None
    available = available_cpus() if available is None else available
    current = torch.get_num_threads() if current is None else current
    return min(current, available)


def configure_threads() -> int:
    """Size torch's intra-op threads once per process (:func:`thread_count`); returns the count in use.

    Called when the engine starts (``fit``, ``predict``); later calls change nothing, so a
    user's own ``torch.set_num_threads`` after the first one stands.
    """
    global _threads_configured
    if not _threads_configured:
        n = thread_count()
        if n is not None and n != torch.get_num_threads():
            log.info("torch intra-op threads: %d (CPUs available to this process: %d)", n, available_cpus())
            torch.set_num_threads(n)
        _threads_configured = True
    return torch.get_num_threads()
