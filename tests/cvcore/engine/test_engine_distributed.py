"""Data-parallel training on 2 gloo (CPU) processes launched through torchrun's launcher."""

from __future__ import annotations

import time

import pytest
import torch

from cvcore.config import RunConfig
from cvcore.engine.checkpoint import load_checkpoint
from cvcore.engine.data import make_loaders
from cvcore.engine.distributed import Dist, Nodes, RankFailed, devices_per_node, launch, unwrap
from cvcore.engine.train import fit

from ddp_helpers import StopAfter, fit_rank, kill_self_rank, no_norm_classifier

TIMING = ["train/time_s", "train/images_per_s", "train/cpu_time_s"]


def _config(**train) -> dict:
    # The default augmentation preset: per-sample seeds make it the same on 1 or 2 processes.
    return {
        "data": {"img_size": 32},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "warmup_epochs": 0.5, "device": "cpu"} | train,
    }


def _one_process(snapshot, config: dict, out_dir):
    run_config = RunConfig.model_validate(config)
    train, val = make_loaders(snapshot, run_config)
    return fit(
        no_norm_classifier(),
        train,
        val,
        config=run_config,
        task="classification",
        out_dir=out_dir,
        meta={"model_name": "no_norm"},
    )


def _weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_two_processes_match_one_with_the_same_global_batch(shapes_classification, tmp_path):
    # SGD: Adam divides by each weight's gradient scale, which turns the float rounding of a
    # gradient near zero into a visible step, so its weights agree only to ~1e-4.
    config = _config(optimizer="sgd", lr=0.05)
    single = _one_process(shapes_classification, config, tmp_path / "one")
    results = launch(fit_rank, (str(shapes_classification.path), config, str(tmp_path / "two"), None), nproc=2)
    assert set(results) == {0, 1} and results[1] is None
    double = results[0]
    # The same loss curve and validation numbers (float tolerance: sums are split over two processes) ...
    a, b = single.history.drop(TIMING), double.drop(TIMING)
    assert a.columns == b.columns and a.height == b.height == 2
    for col in a.columns:
        assert a.get_column(col).to_list() == pytest.approx(b.get_column(col).to_list(), rel=1e-4, abs=1e-6), col
    assert double.get_column("train/images").to_list() == [64.0, 64.0]  # the global batches: 4 steps x 16 images
    # ... and the same weights, saved without DDP's "module." prefix.
    one, two = _weights(tmp_path / "one" / "last.pt"), _weights(tmp_path / "two" / "last.pt")
    assert one.keys() == two.keys() and not any(k.startswith("module.") for k in two)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)
    report = (tmp_path / "two" / "metrics.json").read_text()
    assert '"world_size": 2' in report
    state = load_checkpoint(tmp_path / "two" / "last.pt")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2


def test_resume_under_ddp_is_exact(shapes_classification, tmp_path):
    config = _config(epochs=3, ema_decay=0.9)
    snap = str(shapes_classification.path)
    straight = launch(fit_rank, (snap, config, str(tmp_path / "straight"), None), nproc=2)[0]
    with pytest.raises(RankFailed, match=r"rank 0 of 2 failed .*: KeyboardInterrupt: stopped after epoch 1"):
        launch(fit_rank, (snap, config, str(tmp_path / "killed"), None, (StopAfter(1),)), nproc=2)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1
    # Fresh processes rebuild the model (from another seed: the checkpoint must restore everything).
    last = str(tmp_path / "killed" / "last.pt")
    resumed = launch(fit_rank, (snap, config, str(tmp_path / "killed"), last, (), 123), nproc=2)[0]
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "killed" / "last.pt")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert resumed.drop(TIMING).equals(straight.drop(TIMING))


def test_a_killed_rank_fails_the_launch_quickly_with_its_cause(shapes_classification, tmp_path):
    start = time.monotonic()
    with pytest.raises(RankFailed, match=r"rank 1 of 2 failed .*(SIGKILL|Signal 9)"):
        launch(
            kill_self_rank, (str(shapes_classification.path), _config(epochs=3), str(tmp_path / "run"), 1, 3), nproc=2
        )
    assert time.monotonic() - start < 60


def test_a_python_error_names_the_rank_and_the_exception(shapes_classification, tmp_path):
    config = _config(batch_size=15)  # does not split over 2 devices
    with pytest.raises(
        RankFailed, match=r"ValueError: train.batch_size 15 is the global batch and must split evenly over 2 devices"
    ):
        launch(fit_rank, (str(shapes_classification.path), config, str(tmp_path / "run"), None), nproc=2)


def test_unwrap_finds_the_plain_model_inside_ddp_and_compile():
    model = no_norm_classifier()
    assert unwrap(model) is model
    compiled_like = torch.nn.Module()
    compiled_like._orig_mod = model  # what torch.compile's OptimizedModule holds
    assert unwrap(compiled_like) is model


def test_loaders_split_the_global_batch_and_cover_one_permutation(shapes_classification):
    config = RunConfig.model_validate(_config())
    one = make_loaders(shapes_classification, config).train
    ranks = [make_loaders(shapes_classification, config, rank=r, world_size=2).train for r in (0, 1)]
    for loader in (one, *ranks):
        loader.sampler.set_epoch(3)
    assert one.batch_size == 16 and all(r.batch_size == 8 for r in ranks)
    whole = list(iter(one.sampler))
    parts = [list(iter(r.sampler)) for r in ranks]
    for step in range(len(one)):
        batch = whole[step * 16 : (step + 1) * 16]
        assert sorted(parts[0][step * 8 : (step + 1) * 8] + parts[1][step * 8 : (step + 1) * 8]) == sorted(batch)


def test_devices_and_nodes_are_checked():
    assert devices_per_node(2, "cpu") == 2
    assert devices_per_node("auto", "cpu") == 1
    with pytest.raises(ValueError, match="--rdzv-endpoint must be HOST:PORT"):
        Nodes(nnodes=2, node_rank=1)
    with pytest.raises(ValueError, match="--node-rank must be in 0..1"):
        Nodes(nnodes=2, node_rank=2, rdzv_endpoint="h:29500")
    d = Dist()
    assert (
        d.sum({"a": 1.0}) == {"a": 1.0}
        and d.gather(3) == [3]
        and d.broadcast(4) == 4
        and list(d.shard(5)) == [0, 1, 2, 3, 4]
    )


def test_sync_bn_needs_cuda():
    from cvcore.engine.distributed import prepare_model

    with pytest.raises(ValueError, match="sync_bn needs GPUs"):
        prepare_model(torch.nn.BatchNorm2d(3), Dist(rank=0, world_size=2), sync_bn=True)
    assert type(prepare_model(torch.nn.BatchNorm2d(3), Dist(), sync_bn=True)) is torch.nn.BatchNorm2d


def test_two_nodes_train_one_run_that_node_0_writes(shapes_classification, tmp_path):
    """Two "machines" on loopback (one process each): node 1 joins node 0's run at its endpoint."""
    import json
    import socket
    import subprocess
    import sys

    from cvcore.engine.run import train_run

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = RunConfig.model_validate(
        {
            "data": {"snapshot": str(shapes_classification.path), "img_size": 16},
            "model": {"name": "resnet18"},
            "train": {"epochs": 1, "batch_size": 16, "device": "cpu"},
        }  # fmt: skip
    )
    endpoint = f"127.0.0.1:{port}"
    node1 = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cvcore.config import RunConfig; from cvcore.engine.distributed import Nodes; "
         "from cvcore.engine.run import join_run; "
         "join_run(RunConfig.model_validate_json(sys.argv[1]), nodes=Nodes(nnodes=2, node_rank=1, rdzv_endpoint=sys.argv[2]))",
         config.model_dump_json(), endpoint],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        result = train_run(config, tmp_path / "run", nodes=Nodes(nnodes=2, node_rank=0, rdzv_endpoint=endpoint))
        output, _ = node1.communicate(timeout=300)
    finally:
        node1.kill()
    assert node1.returncode == 0, output
    assert result.world_size == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["world_size"] == 2
    assert result.final_metrics["train/images"] == 64.0  # both nodes' shares of the 4 global batches
    assert not (tmp_path / "last.pt").exists()  # node 1 wrote nothing (its working folder)


def test_the_cause_is_the_first_rank_that_failed_not_the_peers_that_lost_it():
    from types import SimpleNamespace

    from cvcore.engine.distributed import _rank_failed

    lost = {"message": "RuntimeError: [gloo/pair.cc:561] Connection closed by peer [127.0.0.1]:5000", "extraInfo": {}}
    launcher = SimpleNamespace(failures={
        1: SimpleNamespace(message=lost, timestamp=100, pid=11, exitcode=1),  # seen first by the launcher
        0: SimpleNamespace(message="To enable traceback see: ...", timestamp=101, pid=10, exitcode=1),
    })  # fmt: skip
    recorded = [{"rank": 0, "time": 100.5, "message": "torch.OutOfMemoryError: CUDA out of memory", "traceback": None}]
    err = _rank_failed(launcher, world=2, recorded=recorded)
    assert (
        str(err)
        == "rank 0 of 2 failed (pid 10, exit code 1): torch.OutOfMemoryError: CUDA out of memory (1 other rank(s) failed after it)"
    )
    killed = SimpleNamespace(failures={
        0: SimpleNamespace(message=lost, timestamp=100, pid=10, exitcode=1),
        1: SimpleNamespace(message="Signal 9 (SIGKILL) received by PID 11", timestamp=100, pid=11, exitcode=-9),
    })  # fmt: skip
    assert str(_rank_failed(killed, world=2)).startswith(
        "rank 1 of 2 failed (pid 11, exit code -9): Signal 9 (SIGKILL)"
    )


def test_progress_bar_travels_to_rank_0():
    import pickle

    from cvcore.engine.callbacks import ProgressBar

    bar = ProgressBar()
    bar._epochs = 5
    copy = pickle.loads(pickle.dumps(bar))
    assert copy._epochs == 5 and copy.console.stderr


def test_compiled_training_saves_the_plain_models_weights(shapes_classification, tmp_path):
    """train.compile: the forward runs through torch.compile; the checkpoint has no _orig_mod. names."""
    config = _config(epochs=1, compile=True)
    result = _one_process(shapes_classification, config, tmp_path / "run")
    weights = _weights(tmp_path / "run" / "last.pt")
    assert set(weights) == set(no_norm_classifier().state_dict())
    assert result.final_metrics["train/loss"] > 0
