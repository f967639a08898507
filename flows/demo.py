"""``demo``: the main job on built-in data — a classifier, then a detector, through train_pipeline.

Synthetic shapes datasets (cvcore.data.synthetic, made once per size under
``<CVFLOW_HOME>/demo-data``), then the whole pipeline twice: ingest → augment → train → predict
val/test → evaluate → register. The classifier goes first so that its registered version can
start the detector's backbone (transfer learning through the MLflow registry, as a user would
reuse a backbone trained on one task for another). Everything lands where a real run's results
land (MLflow, Parquet, Prefect), so the demo is also the quickest way to see what cvflow
produces. ``cvflow demo`` prints the summary.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from cvcore.config import PartialRunConfig
from flows.params import DataSource, DemoParams, DemoResult, PipelineResult, TrainPipelineParams
from flows.train import train_pipeline
from tasks.artifacts import artifact_key, fmt
from tasks.ingest import make_demo_data
from tasks.tracking import cvflow_home

log = logging.getLogger(__name__)

DETECTION_IMAGE_SIZE = 128


@flow(name="demo")
def demo(params: DemoParams = DemoParams()) -> DemoResult:
    """Train, evaluate and register a classifier and a detector (its backbone transferred) on synthetic shapes."""
    if params.transfer:  # fail in a second, not after the classifier's minutes of training
        check_transfer(params.detector, params.classifier, classifier_img_size=params.classification_image_size)
    data = cvflow_home() / "demo-data"
    n_cls, n_det, cls_size = params.classification_images, params.detection_images, params.classification_image_size
    cls_data = make_demo_data(
        data / _folder("shapes-cls", n_cls, cls_size), task_kind="classification",
        n_train=n_cls[0], n_val=n_cls[1], n_test=n_cls[2], image_size=cls_size,
    )  # fmt: skip
    det_data = make_demo_data(
        data / _folder("shapes-det", n_det, DETECTION_IMAGE_SIZE), task_kind="detection",
        n_train=n_det[0], n_val=n_det[1], n_test=n_det[2], image_size=DETECTION_IMAGE_SIZE,
    )  # fmt: skip
    classifier = train_pipeline(classifier_params(cls_data.path, params))
    backbone = classifier.model.uri if params.transfer else None
    if backbone:
        get_run_logger().info("%s starts from the backbone of %s (transfer learning)", params.detector, backbone)
    detector = train_pipeline(detector_params(det_data.path, params, pretrained=backbone))
    _artifact(detector, classifier, backbone=backbone)
    return DemoResult(detector=detector, classifier=classifier, detector_backbone=backbone)


def classifier_params(path: Path, params: DemoParams) -> TrainPipelineParams:
    """The classifier's pipeline: its registry defaults, the demo's epochs and image size."""
    config = {"model": {"name": params.classifier}, "data": {"img_size": params.classification_image_size}}
    if params.classifier_epochs:
        config["train"] = {"epochs": params.classifier_epochs}
    return _pipeline_params(path, config, params)


def detector_params(path: Path, params: DemoParams, *, pretrained: str | None) -> TrainPipelineParams:
    """The detector's pipeline: its registry defaults, the demo's epochs and augmentation preset,
    and ``pretrained`` (a classifier's model URI) for its backbone."""
    config: dict = {"model": {"name": params.detector}, "data": {"img_size": DETECTION_IMAGE_SIZE}}
    if pretrained:
        config["model"]["pretrained"] = pretrained
    if params.detector_epochs:
        config["train"] = {"epochs": params.detector_epochs}
    if params.detector_augment:
        config["augment"] = {"preset": params.detector_augment}
    return _pipeline_params(path, config, params)


def check_transfer(detector: str, classifier: str, *, classifier_img_size: int) -> None:
    """Raise ValueError unless ``classifier``'s weights can start ``detector``'s backbone.

    Both models are built untrained and the classifier's state dict is partially loaded into the
    detector exactly as the run will load it (by name and shape, cvcore.models.pretrained), so
    this answers for the real run in about a second. Tensors kept initialised because their shape
    differs (e.g. a small-input stem) are only logged.
    """
    from cvcore.models import build_model
    from cvcore.models.capabilities import Transferable
    from cvcore.models.pretrained import load_partial

    det = build_model(detector, num_classes=2, img_size=DETECTION_IMAGE_SIZE)
    cls = build_model(classifier, num_classes=2, img_size=classifier_img_size)
    source = f"{classifier} ({classifier_img_size} px)"
    try:
        renames = det.transfer_renames if isinstance(det, Transferable) else ()
        report = load_partial(det, cls.state_dict(), renames=renames, source=source, model_name=detector)
    except ValueError:
        raise ValueError(
            f"classifier {classifier!r} cannot start detector {detector!r}'s backbone: none of its weights fit by name and shape; "
            f"choose a classifier of the detector's backbone architecture, or turn transfer off (--no-transfer)"
        ) from None
    if report.shape_mismatch:
        log.warning(
            "%s: %d backbone tensors of %s keep their random start (other shape): %s",
            detector, len(report.shape_mismatch), source, ", ".join(report.shape_mismatch[:4]),
        )  # fmt: skip


def _pipeline_params(path: Path, config: dict, params: DemoParams) -> TrainPipelineParams:
    return TrainPipelineParams(
        data=DataSource(path=path),
        config=PartialRunConfig.model_validate(config),
        experiment=params.experiment,
        progress=params.progress,
    )


def _folder(prefix: str, counts: tuple[int, int, int], size: int) -> str:
    """One folder per dataset settings, so a changed setting never reuses stale demo data."""
    return f"{prefix}-{'-'.join(map(str, counts))}-{size}px"


def _artifact(detector: PipelineResult, classifier: PipelineResult, *, backbone: str | None) -> None:
    lines = ["# cvflow demo", ""]
    for r in (classifier, detector):
        split = "test" if "test" in r.metrics else "val"
        lines.append(
            f"- **{r.model.name} v{r.model.version}**: {split} {r.headline} = {fmt(r.metrics[split].get(r.headline, float('nan')))}"
            f" — [MLflow run]({r.run_url}), predictions `{r.predictions[split].dir}`"
        )
    if backbone:
        lines += ["", f"The detector's backbone started from `{backbone}` (transfer learning)."]
    create_markdown_artifact("\n".join(lines), key=artifact_key("demo", "summary"), description="cvflow demo")
