"""evaluate_pipeline at scale: Dask workers, resuming after a kill, object stores (tiny data).

One YOLOv1 checkpoint (one epoch on 24 images of 64 px) is scored on the 8 val images, split
into shards. A reference run on threads fixes the expected metrics and predictions; the other
runs must reproduce them exactly: on a real Dask LocalCluster of two worker processes (an
existing scheduler, and the DaskLocalCluster spec that starts its own), after a
process killed in the middle of a shard, and with the snapshot and the predictions on an S3
server (moto, on loopback).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from cvcore.config import RunConfig
from cvcore.engine.run import train_run
from flows.evaluate import evaluate_pipeline
from flows.params import DaskLocalCluster, DaskScheduler, EvaluatePipelineParams, ThreadRunner
from flows.shards import make_task_runner

pytestmark = pytest.mark.slow

SHARDS = 4
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(shapes_detection, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("yolo-run")
    config = RunConfig.model_validate(
        {
            "data": {"snapshot": str(shapes_detection.path), "img_size": 64},
            "model": {"name": "yolov1"},
            "train": {"epochs": 1, "batch_size": 8},
        }
    )
    train_run(config, out)
    return out / "best.pt"


def _params(checkpoint: Path, data, **kw) -> EvaluatePipelineParams:
    return EvaluatePipelineParams(
        model=str(checkpoint), data=data, split="val", prediction_shards=SHARDS, batch_size=2, **kw
    )


def _sorted_predictions(result) -> pl.DataFrame:
    files = (
        sorted(str(p) for p in Path(result.predictions).glob("part-*.parquet"))
        if not isinstance(result.predictions, str)
        else None
    )
    frame = pl.read_parquet(files) if files else pl.read_parquet(f"{result.predictions}/part-*.parquet")
    return frame.sort(frame.columns)


def _assert_same_metrics(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert (math.isnan(value) and math.isnan(got[key])) or got[key] == value, key


@pytest.fixture(scope="module")
def reference(checkpoint, shapes_detection, tmp_path_factory):
    """The thread runner's result, in a folder of its own."""
    out = tmp_path_factory.mktemp("preds-threads")
    result = evaluate_pipeline(_params(checkpoint, str(shapes_detection.path), predictions=str(out)))
    assert result.shards_predicted == tuple(range(SHARDS)) and result.shards_reused == ()
    assert result.metrics["map_50"] >= 0 and _sorted_predictions(result).height > 0
    return result


def _needs_dask():
    # prefect-dask is the optional extra `dask`; the Dask tests need it in the test environment too.
    return pytest.importorskip("prefect_dask", reason="prefect-dask (extra 'dask') is not installed")


def test_task_runner_specs_build_the_runners_they_name():
    from prefect.task_runners import ThreadPoolTaskRunner

    DaskTaskRunner = _needs_dask().DaskTaskRunner

    assert isinstance(make_task_runner(ThreadRunner(max_workers=3)), ThreadPoolTaskRunner)
    local = make_task_runner(DaskLocalCluster(n_workers=2))
    assert (
        isinstance(local, DaskTaskRunner)
        and local.cluster_kwargs["n_workers"] == 2
        and local.cluster_kwargs["processes"]
    )
    assert make_task_runner(DaskScheduler(address="tcp://10.0.0.1:8786")).address == "tcp://10.0.0.1:8786"
    params = EvaluatePipelineParams.model_validate(
        {"model": "m", "data": "s3://b/s", "task_runner": {"kind": "dask-local", "n_workers": 3}}
    )
    assert params.task_runner == DaskLocalCluster(n_workers=3) and params.data == "s3://b/s"


def test_dask_local_cluster_of_two_processes_gives_the_thread_runners_metrics(
    checkpoint, shapes_detection, reference, tmp_path
):
    _needs_dask()
    from distributed import Client, LocalCluster, get_task_stream

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        workers = set(client.scheduler_info()["workers"])
        params = _params(
            checkpoint,
            str(shapes_detection.path),
            predictions=str(tmp_path),
            task_runner=DaskScheduler(address=cluster.scheduler_address),
        )
        with get_task_stream(client) as stream:
            result = evaluate_pipeline(params)
    assert len(workers) == 2
    assert result.shards_predicted == tuple(range(SHARDS))
    ran_on = {t["worker"] for t in stream.data}
    assert len(stream.data) >= SHARDS and ran_on <= workers  # the shards ran in the cluster's worker processes
    _assert_same_metrics(result.metrics, reference.metrics)
    assert _sorted_predictions(result).equals(_sorted_predictions(reference))


def test_the_dask_local_cluster_spec_gives_the_thread_runners_metrics(
    checkpoint, shapes_detection, reference, tmp_path
):
    """The spec users pick (a temporary cluster the runner starts and stops), not only an existing scheduler."""
    _needs_dask()
    params = _params(
        checkpoint, str(shapes_detection.path), predictions=str(tmp_path), task_runner=DaskLocalCluster(n_workers=2)
    )
    result = evaluate_pipeline(params)
    assert result.shards_predicted == tuple(range(SHARDS)) and result.shards_reused == ()
    _assert_same_metrics(result.metrics, reference.metrics)
    assert _sorted_predictions(result).equals(_sorted_predictions(reference))


_KILLED_RUN = """
import os, pathlib, sys, time
sys.path.insert(0, {repo!r})
import cvcore.engine.infer as infer
from flows.evaluate import evaluate_pipeline
from flows.params import EvaluatePipelineParams, ThreadRunner

original = infer.predict
def predict(*args, indices, **kwargs):
    for i, batch in enumerate(original(*args, indices=indices, **kwargs)):
        yield batch
        if indices.start == {hang_at} and i == 0:  # one batch into the shard: say so, then hang until killed
            pathlib.Path({signal!r}).touch()
            time.sleep(600)
infer.predict = predict
evaluate_pipeline(EvaluatePipelineParams.model_validate_json({params!r}))
"""


def test_a_killed_evaluation_resumes_with_only_the_missing_shards(checkpoint, shapes_detection, reference, tmp_path):
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "preds"
    params = _params(
        checkpoint, str(shapes_detection.path), predictions=str(out), task_runner=ThreadRunner(max_workers=1)
    )
    signal_file = tmp_path / "hanging"
    script = _KILLED_RUN.format(
        repo=str(REPO), hang_at=4, signal=str(signal_file), params=params.model_dump_json()
    )  # 8 images / 4 shards
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not signal_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the evaluation never reached shard 2"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Killed inside shard 2 (shards run one at a time): 0 and 1 are complete, 2 is only a hidden temporary.
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    [orphan] = [p for p in out.iterdir() if p.name.startswith(".part-00002.parquet.")]
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))  # as if the kill was long ago: no writer is still on it
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}

    result = evaluate_pipeline(params)
    assert result.shards_reused == (0, 1) and result.shards_predicted == (2, 3)
    assert sorted(p.name for p in out.iterdir()) == [
        f"part-0000{i}.parquet" for i in range(SHARDS)
    ]  # the orphan is gone
    assert {p: (out / p).stat().st_mtime_ns for p in before} == before  # the finished shards were not rewritten
    _assert_same_metrics(result.metrics, reference.metrics)
    assert _sorted_predictions(result).equals(_sorted_predictions(reference))


def test_shards_of_another_sharding_are_replaced_not_reused(checkpoint, shapes_detection, reference, tmp_path):
    import shutil

    for p in Path(reference.predictions).glob("part-*.parquet"):
        shutil.copy(p, tmp_path / p.name)  # complete shards, but of a 4-shard split
    result = evaluate_pipeline(
        _params(checkpoint, str(shapes_detection.path), predictions=str(tmp_path)).model_copy(
            update={"prediction_shards": 3}
        )
    )
    assert result.shards_predicted == (0, 1, 2) and result.shards_reused == ()
    assert sorted(p.name for p in tmp_path.glob("part-*.parquet")) == [
        f"part-0000{i}.parquet" for i in range(3)
    ]  # the 4th is gone
    _assert_same_metrics(result.metrics, reference.metrics)


def test_a_folder_of_another_models_predictions_is_refused_by_the_flow_and_kept(checkpoint, shapes_detection, tmp_path):
    """Data-loss audit: these files used to be deleted (another evaluation's MLflow run points at them)."""
    from cvcore.engine.infer import empty_batch
    from cvcore.engine.shards import ShardKey, write_shard

    other = ShardKey("c" * 64, shapes_detection.digest, "val", shard=1, num_shards=2, task="detection")
    theirs = write_shard([empty_batch("detection")], tmp_path, key=other, num_images=0)
    before = Path(theirs.uri).read_bytes()
    with pytest.raises(
        ValueError,
        match=rf"predictions folder {tmp_path} holds another evaluation's predictions \(part-00001\.parquet: checkpoint c{{12}}, ",
    ):
        evaluate_pipeline(
            _params(checkpoint, str(shapes_detection.path), predictions=str(tmp_path))
        )  # as a run from the dashboard
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["part-00001.parquet"] and Path(theirs.uri).read_bytes() == before
    )


@pytest.fixture
def s3(monkeypatch):
    """An S3 server (moto) on loopback with one bucket; the AWS variables point every client at it."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is a test-only dependency")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_EC2_METADATA_DISABLED": "true",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket="cvflow")
    yield "s3://cvflow"
    server.stop()


def test_snapshot_predictions_and_mlflow_artifacts_on_an_object_store(checkpoint, shapes_detection, reference, s3):
    import pyarrow.fs as pafs
    from mlflow import MlflowClient

    from tasks.tracking import mlflow_client

    fs, root = pafs.FileSystem.from_uri(f"{s3}/snapshots/shapes")
    pafs.copy_files(str(shapes_detection.path), root, destination_filesystem=fs)
    client = mlflow_client()
    client.create_experiment("on-s3", artifact_location=f"{s3}/mlartifacts")
    params = _params(checkpoint, f"{s3}/snapshots/shapes", predictions=f"{s3}/predictions/val", experiment="on-s3")

    result = evaluate_pipeline(params)
    assert result.predictions == f"{s3}/predictions/val" and result.shards_predicted == tuple(range(SHARDS))
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector("cvflow/predictions/val")))
    assert names == [f"part-0000{i}.parquet" for i in range(SHARDS)]  # no temporary left behind
    _assert_same_metrics(result.metrics, reference.metrics)
    assert _sorted_predictions(result).equals(_sorted_predictions(reference))
    run = MlflowClient().get_run(result.run_id)
    assert run.info.artifact_uri.startswith(f"{s3}/mlartifacts/")
    assert {a.path for a in MlflowClient().list_artifacts(result.run_id, "plots/val")} >= {
        "plots/val/pr_curves.png"
    }  # read back from S3
    assert run.data.tags["cvflow.snapshot"] == f"{s3}/snapshots/shapes"

    again = evaluate_pipeline(params)  # every shard is complete: nothing is predicted again
    assert again.shards_reused == tuple(range(SHARDS)) and again.shards_predicted == ()
    _assert_same_metrics(again.metrics, reference.metrics)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dask-workers", "2", "--dask-address", "tcp://127.0.0.1:8786"], "not both"),
        (["--format", "coco"], "only snapshots can be read from a URI"),
    ],
)
def test_cvflow_evaluate_refuses_contradicting_options(extra, message):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["evaluate", "--model", "m.pt", "--data", "s3://bucket/snapshots/x", *extra])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
