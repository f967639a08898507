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


# --- CPU threads: affinity and the cgroup v2 quota (fake /proc/self/cgroup and /sys/fs/cgroup) ---


def _cgroup(tmp_path, limits: dict[str, str], *, group: str = "/user.slice/job.scope"):
    """A fake cgroup v2 tree: ``limits`` maps a cgroup path ("" = the root) to its cpu.max text."""
    root = tmp_path / "cgroup"
    (root / group.lstrip("/")).mkdir(parents=True)
    for path, text in limits.items():
        (root / path.lstrip("/") / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{group}\n")
    return {"proc_cgroup": proc, "cgroup_root": root}


def test_available_cpus_is_the_affinity_without_a_quota(tmp_path):
    from cvcore.engine.device import available_cpus

    files = _cgroup(tmp_path, {"/user.slice/job.scope": "max 100000"})
    assert available_cpus(affinity={0, 1, 2, 3, 4, 5}, **files) == 6
    # no cgroup v2 at all (v1 host, macOS): the affinity alone
    assert available_cpus(affinity={0, 1, 2}, proc_cgroup=tmp_path / "missing", cgroup_root=tmp_path / "none") == 3


def test_available_cpus_honours_the_tightest_quota_on_the_way_to_the_root(tmp_path):
    from cvcore.engine.device import available_cpus, cgroup_cpu_quota

    # 1.5 CPUs on the job, 4 on its parent: 1.5 applies, rounded up to 2 threads
    files = _cgroup(tmp_path, {"/user.slice/job.scope": "150000 100000", "/user.slice": "400000 100000"})
    assert cgroup_cpu_quota(**files) == pytest.approx(1.5)
    assert available_cpus(affinity=set(range(16)), **files) == 2
    # the parent's limit is the tighter one
    files = _cgroup(tmp_path / "b", {"/user.slice/job.scope": "max 100000", "/user.slice": "100000 100000"})
    assert available_cpus(affinity=set(range(16)), **files) == 1
    # fewer CPUs in the affinity than in the quota: the affinity
    files = _cgroup(tmp_path / "c", {"": "800000 100000"})
    assert available_cpus(affinity={0, 1}, **files) == 2


def test_a_tiny_or_garbled_quota_never_gives_zero_threads(tmp_path):
    from cvcore.engine.device import available_cpus

    assert available_cpus(affinity={0, 1, 2, 3}, **_cgroup(tmp_path, {"/user.slice/job.scope": "1000 100000"})) == 1
    assert available_cpus(affinity={0, 1, 2, 3}, **_cgroup(tmp_path / "b", {"/user.slice/job.scope": "lots"})) == 4


def test_thread_count_prefers_cvflow_num_threads_then_respects_omp_then_caps_at_the_cpus():
    from cvcore.engine.device import thread_count

    assert thread_count(environ={"CVFLOW_NUM_THREADS": "3"}, available=2, current=8) == 3
    assert thread_count(environ={"OMP_NUM_THREADS": "4"}, available=2, current=4) is None  # the user chose
    assert thread_count(environ={}, available=2, current=8) == 2  # 8 threads on 2 usable CPUs: capped
    assert thread_count(environ={}, available=16, current=4) == 4  # never raised
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match=f"CVFLOW_NUM_THREADS={bad!r}: expected a positive number"):
            thread_count(environ={"CVFLOW_NUM_THREADS": bad}, available=2, current=2)


def test_configure_threads_applies_once(monkeypatch):
    from cvcore.engine import device

    before = torch.get_num_threads()
    monkeypatch.setattr(device, "_threads_configured", False)
    monkeypatch.setenv("CVFLOW_NUM_THREADS", "2")
    try:
        assert device.configure_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("CVFLOW_NUM_THREADS", "1")
        assert device.configure_threads() == 2  # already applied: a later call changes nothing
    finally:
        torch.set_num_threads(before)
