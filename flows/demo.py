"""``demo``: the main job on built-in data — a detector and a classifier through train_pipeline.

Synthetic shapes datasets (cvcore.data.synthetic, made once under ``<CVFLOW_HOME>/demo-data``),
then the whole pipeline twice: ingest → augment → train → predict val/test → evaluate →
register. Everything lands where a real run's results land (MLflow, Parquet, Prefect), so the
demo is also the quickest way to see what cvflow produces. ``cvflow demo`` prints the summary.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from cvcore.config import RunConfig
from flows.params import DataSource, DemoParams, DemoResult, PipelineResult, TrainPipelineParams
from flows.train import train_pipeline
from tasks.artifacts import artifact_key, fmt
from tasks.ingest import make_demo_data
from tasks.tracking import cvflow_home

DETECTION_IMAGE_SIZE = 128
CLASSIFICATION_IMAGE_SIZE = 32


@flow(name="demo")
def demo(params: DemoParams = DemoParams()) -> DemoResult:
    """Train, evaluate and register a detector and a classifier on synthetic shapes."""
    data = cvflow_home() / "demo-data"
    n_det, n_cls = params.detection_images, params.classification_images
    det_data = make_demo_data(
        data / f"shapes-det-{'-'.join(map(str, n_det))}", task_kind="detection",
        n_train=n_det[0], n_val=n_det[1], n_test=n_det[2], image_size=DETECTION_IMAGE_SIZE,
    )  # fmt: skip
    cls_data = make_demo_data(
        data / f"shapes-cls-{'-'.join(map(str, n_cls))}", task_kind="classification",
        n_train=n_cls[0], n_val=n_cls[1], n_test=n_cls[2], image_size=CLASSIFICATION_IMAGE_SIZE,
    )  # fmt: skip
    detector = train_pipeline(_train_params(det_data.path, params.detector, params.detector_epochs, params))
    classifier = train_pipeline(_train_params(cls_data.path, params.classifier, params.classifier_epochs, params))
    _artifact(detector, classifier)
    return DemoResult(detector=detector, classifier=classifier)


def _train_params(path, model: str, epochs: int | None, params: DemoParams) -> TrainPipelineParams:
    config = {"model": {"name": model}} | ({"train": {"epochs": epochs}} if epochs else {})
    return TrainPipelineParams(
        data=DataSource(path=path), config=RunConfig.model_validate(config), experiment=params.experiment, progress=params.progress
    )


def _artifact(*results: PipelineResult) -> None:
    lines = ["# cvflow demo", ""]
    for r in results:
        split = "test" if "test" in r.metrics else "val"
        lines.append(
            f"- **{r.model.name} v{r.model.version}**: {split} {r.headline} = {fmt(r.metrics[split].get(r.headline, float('nan')))}"
            f" — [MLflow run]({r.run_url}), predictions `{r.predictions[split].dir}`"
        )
    create_markdown_artifact("\n".join(lines), key=artifact_key("demo", "summary"), description="cvflow demo")
