"""`cvflow train` and `cvflow predict` end to end on tiny built-in data, and their clear errors."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from cvcore import schema
from flows.cli import app

runner = CliRunner()


def _train(*args: str):
    return runner.invoke(app, ["train", "--quiet", *args])


def _text(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def cls_run(shapes_classification, tmp_path_factory):
    """A one-epoch resnet18 run at 16 px (fast on CPU) made through the command line."""
    out = tmp_path_factory.mktemp("cli") / "run"
    result = _train(
        "--data",
        str(shapes_classification.path),
        "--model",
        "resnet18",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--img-size",
        "16",
        "--batch-size",
        "16",
    )
    assert result.exit_code == 0, result.output
    return out, _text(result)


def test_train_fills_the_run_folder_and_prints_metrics(cls_run):
    out, output = cls_run
    assert {"config.yaml", "last.pt", "best.pt", "metrics.json", "history.parquet"} <= {p.name for p in out.iterdir()}
    assert "val/accuracy" in output and "best epoch 1 of 1" in output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["img_size"] == 16 and config["train"]["epochs"] == 1 and config["model"]["num_classes"] == 4
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1


def test_predict_writes_the_classifications_table(cls_run, shapes_classification, tmp_path):
    out, _ = cls_run
    preds = tmp_path / "preds.parquet"
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(out),
            "--data",
            str(shapes_classification.path),
            "--split",
            "val",
            "--out",
            str(preds),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    df = schema.validate(pl.read_parquet(preds), "classifications")
    assert (
        sorted(df.get_column("image_id").to_list())
        == shapes_classification.split_images("val").get_column("image_id").to_list()
    )


def test_config_file_with_flag_overrides(shapes_classification, tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        yaml.safe_dump(
            {
                "data": {"snapshot": str(shapes_classification.path), "img_size": 16},
                "model": {"name": "resnet18"},
                "train": {"epochs": 3, "batch_size": 16},
            }
        )
    )
    out = tmp_path / "run"
    result = _train("--config", str(run_yaml), "--epochs", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["epochs"] == 1 and config["train"]["batch_size"] == 16  # flag over file, file over defaults
    # resuming a finished run reuses its config and has nothing left to do
    again = _train("--resume", str(out), "--out", str(out))
    assert again.exit_code == 0, again.output
    assert "best epoch 1 of 1" in _text(again)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no_such_net"], "unknown model 'no_such_net'"),
        (["--model", "yolov1"], "is a detection model"),
        (["--model", "resnet18", "--data", "/nonexistent/snapshot"], "is not a snapshot"),
        ([], "no model"),
    ],
)
def test_train_errors_are_one_clear_line(args, message, shapes_classification, tmp_path):
    data = [] if "--data" in args else ["--data", str(shapes_classification.path)]
    result = _train(*data, *args, "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert message in _text(result) and "Traceback" not in result.output


def test_predict_refuses_a_snapshot_of_another_task(cls_run, shapes_detection, tmp_path):
    out, _ = cls_run
    result = runner.invoke(
        app,
        ["predict", "--model", str(out), "--data", str(shapes_detection.path), "--out", str(tmp_path / "p.parquet")],
    )
    assert result.exit_code == 2 and "is a classification model" in _text(result)


def test_train_refuses_a_folder_of_user_files_before_any_flow(shapes_classification, tmp_path, monkeypatch):
    import flows.train

    monkeypatch.setattr(flows.train, "train_pipeline", lambda *a, **k: pytest.fail("the flow must not start"))
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"mine": 1}')
    (folder / "config.yaml").write_text("mine: true\n")
    result = _train(
        "--data", str(shapes_classification.path), "--model", "resnet18", "--out", str(folder), "--epochs", "1"
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is not a cvflow run folder" in _text(result) and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "metrics.json"]
    assert (folder / "metrics.json").read_text() == '{"mine": 1}'


def test_train_into_a_folder_another_training_holds_is_one_line(shapes_classification, tmp_path, monkeypatch):
    import flows.train
    from cvcore.engine.locks import folder_lock
    from cvcore.engine.run import claim_run_folder

    monkeypatch.setattr(flows.train, "train_pipeline", lambda *a, **k: pytest.fail("the flow must not start"))
    out = claim_run_folder(tmp_path / "run", resume=False)
    with folder_lock(out, what="training"):  # as a training running now would
        result = _train(
            "--data", str(shapes_classification.path), "--model", "resnet18", "--out", str(out), "--epochs", "1"
        )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{out} is in use by another run" in _text(result)
