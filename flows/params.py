"""Flow parameters and results as pydantic models.

Prefect builds the dashboard's run form from these (with their descriptions and bounds) and
validates every run's parameters against them, whether the run was started from the dashboard,
a deployment schedule, the command line or Python.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cvcore.config import PartialRunConfig
from cvcore.io import is_plain_name
from tasks.refs import ModelVersionRef, PredictionsRef, SnapshotRef
from tasks.tracking import DEFAULT_EXPERIMENT


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


SourceFormat = Literal["snapshot", "coco", "voc", "yolo", "imagefolder"]


def _form_schema() -> dict[str, Any]:
    """PartialRunConfig's JSON schema with its sections written in place, for the dashboard's run form.

    Every field is blank (None: unset) unless set, and its description says what a blank field
    becomes: the model's default (each registered model's value listed), else cvflow's
    (cvcore.config.resolve). The form sends blanks as
    null, which is unset, so a form never pins a generic default over a model's own.
    """
    schema = PartialRunConfig.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]]))
            return {key: inline(value) for key, value in node.items()}
        return [inline(value) for value in node] if isinstance(node, list) else node

    return inline(schema)


# The run config of a flow's parameters: the user's PartialRunConfig, sections drawn in the form.
class _FormSchema:
    """Gives :func:`_form_schema` when a JSON schema is asked for (not at import: the models'
    defaults it lists import the model registry, torch included)."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        return _form_schema()


FormRunConfig = Annotated[PartialRunConfig, _FormSchema()]


class DataSource(_Params):
    """Where a pipeline's data comes from: a snapshot folder, or a source dataset to ingest."""

    path: Path = Field(description="snapshot folder, or the source dataset (annotation file or folder)")
    format: SourceFormat = Field(
        "snapshot", description="'snapshot' for a folder made by cvflow; else the source format"
    )
    images: Path | None = Field(None, description="image folder, when the format keeps images apart from annotations")
    val_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="split a validation set off train when the source has none"
    )
    name: str | None = Field(None, description="dataset name (default: the source's name); a plain folder name")
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        # It names the snapshot's folder under <CVFLOW_HOME>/snapshots: ../x would put it elsewhere.
        if name is not None and not is_plain_name(name):
            raise ValueError(f"dataset name {name[:80]!r} is not a plain folder name (no /, \\, NUL, . or ..)")
        return name


class TrainPipelineParams(_Params):
    """ingest → augment → train → predict → evaluate → register."""

    data: DataSource | str = Field(
        description="a snapshot folder or object-store URI (s3://bucket/snapshots/name), or a source to ingest (DataSource)"
    )
    config: FormRunConfig = Field(
        default_factory=PartialRunConfig,
        description="the run config (run.yaml): what you set; a blank field takes the model's default, else cvflow's",
    )
    experiment: str = Field(DEFAULT_EXPERIMENT, description="MLflow experiment")
    registered_model: str | None = Field(None, description="MLflow registered model name (default: <dataset>-<model>)")
    eval_splits: tuple[str, ...] = Field(("val", "test"), description="splits to predict and evaluate (those present)")
    prediction_shards: int = Field(1, ge=1, description="Parquet shards per split, predicted in parallel")
    preview_images: int = Field(8, ge=0, description="augmented samples drawn in the augmentation preview")
    progress: bool = Field(False, description="show training progress bars on the console")
    run_dir: Path | None = Field(
        None, description="training run folder (default: <CVFLOW_HOME>/checkpoints/<MLflow run id>)"
    )
    resume: Path | None = Field(
        None, description="continue the training run of this last.pt (its run folder is reused)"
    )
    nnodes: int = Field(
        1, ge=1, description="machines training together (train.devices processes each); this one is node 0"
    )
    rdzv_endpoint: str | None = Field(
        None, description="HOST:PORT on this machine (node 0) where the other nodes join; needed when nnodes > 1"
    )
    task_runner: "ThreadRunner | DaskLocalCluster | DaskScheduler | None" = Field(
        None,
        discriminator="kind",
        description="where the prediction shards run: the flow's own threads (unset), a local Dask cluster, or a Dask scheduler",
    )


class ThreadRunner(_Params):
    """Run prediction shards in threads of the flow's own process (Prefect's ThreadPoolTaskRunner)."""

    kind: Literal["threads"] = "threads"
    max_workers: int | None = Field(None, ge=1, description="threads at once (default: Prefect's)")


class DaskLocalCluster(_Params):
    """Run prediction shards on a temporary Dask LocalCluster of worker processes on this machine."""

    kind: Literal["dask-local"] = "dask-local"
    n_workers: int = Field(2, ge=1, description="worker processes")
    threads_per_worker: int = Field(1, ge=1, description="threads in each worker process")


class DaskScheduler(_Params):
    """Run prediction shards on an existing Dask cluster.

    Every worker must find the checkpoint at the same path as the flow (a shared file system),
    even when the snapshot and the predictions are on an object store; the snapshot is a shared
    folder or a URI each worker stages itself; the predictions folder is shared or a URI.
    """

    kind: Literal["dask-scheduler"] = "dask-scheduler"
    address: str = Field(description="the scheduler's address, e.g. tcp://scheduler:8786")


TaskRunnerSpec = ThreadRunner | DaskLocalCluster | DaskScheduler  # told apart by `kind`
TrainPipelineParams.model_rebuild()  # its task_runner field names the classes above


class EvaluatePipelineParams(_Params):
    """A trained model (registered, logged or a local checkpoint) scored on a dataset split."""

    model: str = Field(
        description="models:/<name>@champion, models:/<name>/<version>, runs:/<id>/model or a checkpoint path"
    )
    data: DataSource | str = Field(
        description="a snapshot folder or object-store URI (s3://bucket/snapshots/name), or a source to ingest (DataSource)"
    )
    split: str = Field("test", description="split to evaluate")
    experiment: str = Field(DEFAULT_EXPERIMENT, description="MLflow experiment of the evaluation run")
    protocol: Literal["coco", "voc07", "voc12"] | None = Field(
        None, description="detection protocol (default: the model's config)"
    )
    prediction_shards: int = Field(
        1, ge=1, description="Parquet files the split is predicted into, one task each (in parallel)"
    )
    batch_size: int = Field(32, ge=1, description="images per inference batch")
    predictions: str | None = Field(
        None,
        description="folder or object-store URI (s3://bucket/prefix) of the split's part-*.parquet files; complete shards of "
        "the same model, data and sharding already there are kept (resume), this model's shards of this data in another "
        "shard count are predicted again (replaced); a folder holding another model's, snapshot's or split's predictions, or "
        "other files named part-NNNNN.parquet, is refused (nothing deleted). One evaluation per predictions folder at a time: a shard "
        "replaced by another run fails the evaluation. Default: "
        "<CVFLOW_HOME>/predictions/model-<checkpoint digest>-data-<snapshot digest>-shards-<prediction_shards>/<split>",
    )
    task_runner: ThreadRunner | DaskLocalCluster | DaskScheduler = Field(
        default_factory=ThreadRunner,
        discriminator="kind",
        description="where prediction shards run: threads here, a local Dask cluster, or a Dask scheduler",
    )


class NightlyParams(_Params):
    """Retrain as a challenger; promote it only if it beats the champion with confidence."""

    train: TrainPipelineParams
    compare_split: str | None = Field(
        None, description="held-out split both models are scored on (default: test, else val)"
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="level of the paired bootstrap interval")
    bootstrap_samples: int = Field(1000, ge=50, description="bootstrap resamples of the image set")


class DemoParams(_Params):
    """The built-in demo: synthetic shapes, a classifier then a detector through train_pipeline.

    The classifier trains first; with ``transfer`` its registered version starts the detector's
    backbone (transfer learning: on this data the detector then reaches the same mAP in about half
    the epochs). With the defaults the demo takes 3-4 minutes on a 2-core CPU and gives a
    detector above 0.8 mAP@0.5 and a classifier above 0.95 accuracy (benchmarks/RESULTS.md,
    "Pipeline demo"); settings not named here come from the models' registry defaults.
    """

    detector: str = Field("yolov1", description="detection model (registered name)")
    classifier: str = Field("resnet18", description="classification model (registered name)")
    detector_epochs: int | None = Field(6, ge=1, description="None: the model's default")
    classifier_epochs: int | None = Field(8, ge=1, description="None: the model's default")
    detection_images: tuple[int, int, int] = Field((480, 100, 100), description="train / val / test images (128 px)")
    classification_images: tuple[int, int, int] = Field((1200, 200, 200), description="train / val / test images")
    classification_image_size: int = Field(
        64,
        ge=16,
        description="px; from 64 up ResNet keeps torchvision's stem, as the detector's backbone does, so every backbone tensor transfers",
    )
    detector_augment: Literal["none", "light", "default", "strong"] | None = Field(
        "light",
        description="the detector's augmentation preset (None: the model's default); 'light' learns fastest in a short run",
    )
    transfer: bool = Field(
        True,
        description="start the detector's backbone from the classifier trained just before (its registered version)",
    )
    experiment: str = Field("cvflow-demo", description="MLflow experiment")
    progress: bool = Field(True, description="training progress bars on the console")


class PipelineResult(_Params):
    """What train_pipeline leaves behind: the MLflow run, the registered version, the Parquet files."""

    run_id: str
    run_url: str
    snapshot: SnapshotRef
    model: ModelVersionRef
    checkpoint: Path
    predictions: dict[str, PredictionsRef]  # split → its part-*.parquet folder
    metrics: dict[str, dict[str, float]]  # split → scalar metrics
    headline: str  # the metric name that ranks models ("map", "map_50" or "macro_f1")


class EvaluateResult(_Params):
    run_id: str
    run_url: str
    model: str
    checkpoint: Path
    predictions: Path | str  # the split's part-*.parquet folder (a local path, or an object-store URI)
    metrics: dict[str, float]
    headline: str
    shards_predicted: tuple[int, ...] = ()  # shards this run computed
    shards_reused: tuple[int, ...] = ()  # complete shards kept from an earlier, interrupted run


class NightlyDecision(_Params):
    """The nightly flow's verdict, as recorded in MLflow and in a Prefect artifact."""

    registered_model: str
    challenger: ModelVersionRef
    champion_before: str | None  # version, None on the first night
    champion_after: str
    promoted: bool
    reason: str
    metric: str | None = None
    split: str | None = None
    difference: float | None = None  # challenger - champion
    ci_low: float | None = None
    ci_high: float | None = None


class DemoResult(_Params):
    detector: PipelineResult
    classifier: PipelineResult
    detector_backbone: str | None = None  # models:/<classifier>/<version> the detector's backbone started from


class ComparePipelineParams(_Params):
    """The detector bake-off: several detectors trained (or loaded) on one dataset, scored alike.

    Contenders run one after another (their training and inference times are columns of the
    table, and running them side by side would distort each other's). ``out`` keeps a finished
    contender's run: running the same bake-off again reuses it instead of training it again.
    """

    data: DataSource
    models: tuple[str, ...] = Field(
        ("rcnn", "fast_rcnn", "faster_rcnn", "yolov1", "fcos"), min_length=1,
        description="registered detectors; NAME=RUN_DIR loads that finished run (or checkpoint) instead of training",
    )  # fmt: skip
    epochs: dict[str, int] = Field(
        default_factory=dict, description="training epochs per model (a model left out: its own default)"
    )
    split: str | None = Field(None, description="split to score (default: test if the dataset has one, else val)")
    protocol: Literal["coco", "voc07", "voc12"] = Field("coco", description="one detection protocol for every model")
    pretrained: str | None = Field(
        None, description="weights every backbone starts from: a checkpoint path or models:/NAME@ALIAS"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    batch_size: int = Field(8, ge=1, description="images per inference batch (the speed columns are measured with it)")
    grid: int = Field(7, ge=1, description="grid of the crowded-cell recall (YOLOv1's S)")
    overrides: dict[str, PartialRunConfig] = Field(
        default_factory=dict,
        description="per model, a run config over its defaults (what is set wins), e.g. {rcnn: {train: {lr: 0.01}}}",
    )
    out: Path | None = Field(
        None,
        description="bake-off folder: runs/, predictions/, cache/, the table (default: <CVFLOW_HOME>/bakeoffs/<MLflow run id>)",
    )
    experiment: str = Field(DEFAULT_EXPERIMENT, description="MLflow experiment of the bake-off run and its child runs")
    progress: bool = Field(False, description="show training progress bars on the console")


class CompareResult(_Params):
    """What compare_pipeline leaves behind: the parent MLflow run, one child run per model, the files."""

    run_id: str  # the parent (bake-off) run
    run_url: str
    snapshot: SnapshotRef
    split: str
    protocol: str
    out: Path
    table: Path  # bakeoff.parquet (tasks.bakeoff.TABLE_SCHEMA, one row per model)
    markdown: Path  # bakeoff.md
    figure: Path  # bakeoff.png
    child_runs: dict[str, str]  # model → its nested MLflow run id
    run_dirs: dict[str, Path]  # model → its training run folder
    predictions: dict[str, Path]  # model → its part-00000.parquet of the scored split
    metrics: dict[str, dict[str, float]]  # model → the numbers of its table row
