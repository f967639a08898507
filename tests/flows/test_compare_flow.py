"""compare_pipeline (the bake-off as a flow) and `cvflow compare` on tiny data.

Two cheap contenders (R-CNN on sliding windows, YOLOv1), one epoch each, on 16 images of 64 px,
through the flow once per module; the command and the failure case load that R-CNN run
instead of training again. The Prefect server and CVFLOW_HOME are conftest's.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cvcore import schema
from flows.cli import app
from flows.compare import check_contenders, compare_pipeline
from flows.params import ComparePipelineParams, DataSource
from tasks.bakeoff import TABLE_SCHEMA, TAG_LOADED
from tasks.tracking import TAG_DATASET, TAG_DATASET_DIGEST, TAG_FAILURE, TAG_FLOW_RUN, TAG_CODE_VERSION, mlflow_client

ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "rcnn": {
        "data": {"img_size": 64},
        "model": {
            "options": {
                "proposal_method": "sliding_windows",
                "window_sizes": [16.0, 32.0],
                "stride": 16,
                "warp_size": 32,
                "small_input": False,
            }
        },
        "train": {"batch_size": 8},
    },
    "yolov1": {"data": {"img_size": 64}, "train": {"batch_size": 8}},
}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """12 train / 4 val images of 64 px."""
    from cvcore.data.synthetic import make_shapes_detection

    out = tmp_path_factory.mktemp("data") / "shapes16"
    return make_shapes_detection(out, n_train=12, n_val=4, n_test=0, image_size=64, min_size=8, max_size=28, seed=0)


@pytest.fixture(scope="module")
def bakeoff(snapshot, tmp_path_factory):
    out = tmp_path_factory.mktemp("bakeoff")
    params = ComparePipelineParams(
        data=DataSource(path=snapshot.path),
        models=("rcnn", "yolov1"),
        epochs={"rcnn": 1, "yolov1": 1},
        device="cpu",
        overrides=FAST,
        out=out,
    )
    state = compare_pipeline(params, return_state=True)
    return state, state.result(raise_on_failure=False)


def _children(client, run_id: str):
    runs = client.search_runs(
        [client.get_run(run_id).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    return {r.data.tags["cvflow.model"]: r for r in runs}


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_flow_completes_with_the_table_in_the_parent_run(bakeoff, snapshot):
    state, result = bakeoff
    assert state.is_completed(), result
    table = pl.read_parquet(result.table)
    assert table.schema == TABLE_SCHEMA and table.get_column("model").to_list() == ["rcnn", "yolov1"]
    assert table.get_column("epochs").to_list() == [1, 1] and result.split == "val"
    assert result.markdown.read_text().count("| rcnn") == 1 and result.figure.stat().st_size > 1000
    for path in result.predictions.values():
        assert pl.read_parquet(path).schema == schema.DETECTIONS

    client = mlflow_client()
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    p = parent.data.params
    assert (
        p["contenders"] == "rcnn,yolov1"
        and p["epochs"] == "rcnn=1,yolov1=1"
        and p["protocol"] == "coco"
        and p["split"] == "val"
    )
    tags = parent.data.tags
    assert tags[TAG_DATASET] == snapshot.name and tags[TAG_DATASET_DIGEST] == snapshot.digest
    assert tags[TAG_FLOW_RUN] == str(state.state_details.flow_run_id) and tags[TAG_CODE_VERSION]
    assert {
        "bakeoff/bakeoff.parquet",
        "bakeoff/bakeoff.md",
        "bakeoff/bakeoff.png",
        "bakeoff/bakeoff.json",
    } <= _artifacts(client, result.run_id)

    from prefect.artifacts import Artifact

    artifact = Artifact.get(f"bakeoff-{snapshot.name}".lower())
    assert artifact is not None and "| rcnn" in artifact.data and result.run_url in artifact.data


def test_one_child_run_per_contender_with_epochs_and_its_row(bakeoff):
    _, result = bakeoff
    client = mlflow_client()
    children = _children(client, result.run_id)
    assert set(children) == {"rcnn", "yolov1"} and result.child_runs == {k: v.info.run_id for k, v in children.items()}
    table = pl.read_parquet(result.table)
    for name, run in children.items():
        assert run.info.status == "FINISHED" and run.data.params["model.name"] == name
        row = table.filter(pl.col("model") == name).row(0, named=True)
        metrics = run.data.metrics
        for column in ("map_50", "map", "recall_isolated", "candidates_per_image", "train_s", "infer_images_per_s"):
            assert metrics[f"final/val/{column}"] == pytest.approx(row[column], nan_ok=True), column
        assert [m.step for m in client.get_metric_history(run.info.run_id, "lr")] == [
            1
        ]  # per-epoch, through the engine callback
        assert "plots/training_curves.png" in _artifacts(client, run.info.run_id)
    rcnn, yolo = children["rcnn"].data.metrics, children["yolov1"].data.metrics
    assert 0 < rcnn["final/val/proposal_recall_70"] <= rcnn["final/val/proposal_recall_50"] <= 1
    assert "final/val/proposal_recall_50" not in yolo  # YOLOv1 has no external proposals


def test_cvflow_compare_loads_a_run_and_replays_its_epochs(bakeoff, snapshot, tmp_path):
    _, result = bakeoff
    run_dir = result.run_dirs["rcnn"]
    cli = CliRunner().invoke(
        app,
        [
            "compare",
            "--data",
            str(snapshot.path),
            "--out",
            str(tmp_path),
            "--models",
            f"rcnn={run_dir}",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert "rcnn" in cli.output and "MLflow run" in cli.output
    assert {p.name for p in tmp_path.iterdir()} >= {"bakeoff.parquet", "bakeoff.md", "bakeoff.png"}
    again = pl.read_parquet(tmp_path / "bakeoff.parquet")
    first = pl.read_parquet(result.table).filter(pl.col("model") == "rcnn")
    assert again.get_column("map_50").item() == pytest.approx(
        first.get_column("map_50").item()
    )  # the same model, scored alike

    client = mlflow_client()
    [parent] = [
        r
        for r in client.search_runs([client.get_run(result.run_id).info.experiment_id])
        if r.data.params.get("out") == str(tmp_path.resolve())
    ]
    [child] = _children(client, parent.info.run_id).values()
    assert child.data.tags[TAG_LOADED] == str(Path(run_dir).resolve())
    assert [m.step for m in client.get_metric_history(child.info.run_id, "lr")] == [1]  # replayed from history.parquet


def test_a_failing_contender_fails_the_flow_and_both_runs(snapshot, tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    params = ComparePipelineParams(
        data=DataSource(path=snapshot.path), models=(f"rcnn={empty}",), device="cpu", out=tmp_path / "out"
    )
    state = compare_pipeline(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="holds no best.pt or last.pt"):
        state.result()
    client = mlflow_client()
    [parent] = [
        r
        for r in client.search_runs([client.get_experiment_by_name("cvflow").experiment_id])
        if r.data.params.get("out") == str((tmp_path / "out").resolve())
    ]
    assert parent.info.status == "FAILED" and "not-a-run" in parent.data.tags[TAG_FAILURE]
    [child] = _children(client, parent.info.run_id).values()
    assert child.info.status == "FAILED"
    assert not (tmp_path / "out" / "bakeoff.parquet").exists()


@pytest.mark.parametrize(
    ("models", "extra", "message"),
    [
        ("rcnn,resnet18", [], "is not a detector"),
        ("rcnn,no_such_net", [], "no_such_net"),
        ("yolov1", ["--epochs", "rcnn=2"], "not among the compared models"),
        ("rcnn=/nonexistent/run", [], "/nonexistent/run"),
        ("yolov1", ["--split", "test"], "no split 'test'"),
        ("yolov1", ["--epochs", "x"], "--epochs: 'x' is not N or MODEL=N"),
        ("yolov1", ["--pretrained", "/no/such/weights.pt"], "--pretrained /no/such/weights.pt: no such file"),
        ("yolov1", ["--protocol", "voc"], "--protocol 'voc': expected one of coco, voc07, voc12"),
        ("yolov1", ["--device", "gpu9"], "unknown device 'gpu9'"),
    ],
)
def test_cvflow_compare_input_errors_are_one_line(models, extra, message, snapshot, tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the flow started although the input was wrong")

    monkeypatch.setattr("flows.compare.compare_pipeline", must_not_run)  # the command must catch it first
    cli = CliRunner().invoke(
        app, ["compare", "--data", str(snapshot.path), "--out", str(tmp_path), "--models", models, *extra]
    )
    assert cli.exit_code == 2, cli.output
    assert message in " ".join(cli.output.split())
    assert cli.output.count("error:") == 1 and "Traceback" not in cli.output


def test_check_contenders_rejects_classification_data_and_stray_options():
    with pytest.raises(ValueError, match="compares detectors"):
        check_contenders("classification", ["yolov1"], epochs={}, overrides={})
    with pytest.raises(ValueError, match=r"overrides given for \['rcnn'\]"):
        check_contenders("detection", ["yolov1"], epochs={}, overrides={"rcnn": {}})
    check_contenders("detection", ["rcnn", "yolov1"], epochs={"yolov1": 2}, overrides={"rcnn": {}})


def test_serve_offers_the_bakeoff_on_demand(tmp_path):
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        serve = importlib.import_module("serve")
    finally:
        sys.path.remove(str(ROOT / "deploy"))
    deployment = serve.compare_deployment(data=tmp_path / "shapes", fmt="snapshot")
    assert deployment.name == "compare" and not deployment.schedules
    compare_pipeline.validate_parameters(deployment.parameters)
    assert deployment.parameters["params"]["data"]["path"] == str(tmp_path / "shapes")
