"""`cvflow augment`: tables printed, preview written, --materialize, clean errors."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from cvcore.data.snapshot import read_snapshot
from flows.commands.augment import augment

# The command on its own app, so this test does not depend on the other commands importing.
app = typer.Typer()
app.command()(augment)
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def test_preset_preview_and_tables(shapes_detection, tmp_path):
    result = invoke(
        "--data",
        str(shapes_detection.path),
        "--preset",
        "light",
        "--preview",
        str(tmp_path / "p.png"),
        "--img-size",
        "48",
        "--n-stats",
        "8",
        "--n-preview",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").is_file()
    for text in (
        "Pipeline",
        "ColorJitter",
        "SanitizeBoundingBoxes",
        "Per step (8 samples of train)",
        "circle",
        "boxes_per_image_after",
    ):
        assert text in result.output


def test_config_file_and_materialize(shapes_detection, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "data:\n  img_size: 40\naugment:\n  mosaic_p: 1.0\n  transforms:\n    - {name: RandomVerticalFlip, p: 0.5}\n"
    )
    out = tmp_path / "aug"
    result = invoke(
        "--data",
        str(shapes_detection.path),
        "--config",
        str(config),
        "--preview",
        str(tmp_path / "p.png"),
        "--materialize",
        "1",
        "--out",
        str(out),
        "--n-stats",
        "4",
        "--seed",
        "5",
    )
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", "")  # rich wraps long paths at the console width
    assert "Mosaic" in flat and "RandomVerticalFlip" in flat and f"snapshot: {out}" in flat
    new = read_snapshot(out)
    assert new.split_images("train").get_column("width").unique().to_list() == [40]  # data.img_size from the file
    assert '"seed": 5' in (out / "augment.json").read_text()


def test_user_errors_exit_2_with_one_line(shapes_detection, tmp_path):
    data, preview = str(shapes_detection.path), str(tmp_path / "p.png")
    config = tmp_path / "run.yaml"
    config.write_text("augment:\n  transforms:\n    - {name: Flip}\n")
    cases = [
        (["--preset", "light", "--config", str(config)], "not both"),
        (["--preset", "wild"], "unknown preset 'wild'"),
        (["--materialize", "2"], "--materialize N and --out NEW_SNAPSHOT go together"),
        (["--config", str(config)], "augment.transforms[0]: unknown transform 'Flip'"),
    ]
    for extra, message in cases:
        result = invoke("--data", data, "--preview", preview, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output.replace("\n", " "), (extra, result.output)
    result = invoke("--data", str(tmp_path / "missing"), "--preview", preview)
    assert result.exit_code == 2 and "not a snapshot" in result.output
