"""MLflow plumbing shared by the tasks: where the store is, run tags, the dataset input, epochs.

MLflow's active run is per thread and Prefect runs tasks in worker threads, so nothing here uses
the fluent ``mlflow.log_*`` calls: every write goes through an :class:`mlflow.MlflowClient` with
an explicit ``run_id`` that the flow opened (docs/ARCHITECTURE.md §1).

Embedded default (docs/ARCHITECTURE.md §5): without ``MLFLOW_TRACKING_URI`` the tracking and registry store
is ``sqlite:///<CVFLOW_HOME>/mlflow.db`` and artifacts go to ``<CVFLOW_HOME>/mlartifacts/``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_RUN_NAME

from cvcore.config import RunConfig, flatten
from cvcore.data.snapshot import Snapshot
from tasks.refs import SnapshotRef

DEFAULT_EXPERIMENT = "cvflow"
UI_HOST, UI_PORT = "127.0.0.1", 5000
_BATCH = 900  # MLflow accepts at most 1000 metrics (100 params) per log_batch call

# Tag names other pieces (the `runs` command, nightly comparisons) read back.
TAG_DATASET = "cvflow.dataset"
TAG_DATASET_DIGEST = "cvflow.dataset_digest"
TAG_SNAPSHOT = "cvflow.snapshot"
TAG_MODEL = "cvflow.model"
TAG_TASK = "cvflow.task"
TAG_FLOW = "cvflow.flow"
TAG_FLOW_RUN = "cvflow.flow_run_id"
TAG_CODE_VERSION = "cvflow.code_version"
TAG_FAILURE = "cvflow.failure"

# MLflow 3's UI opens an experiment in the view its kind names (mlflow/server/js: ExperimentKind);
# without the tag it guesses, and an experiment of few runs opens in the GenAI (traces) view.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the model-training view: runs, metrics, charts
TAG_NOTE = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store cannot be used (no such scheme, the server does not answer);
    the message names the URI."""


# A tracking server answers /health in milliseconds; a mistyped or hung one must cost seconds, not
# MLflow's minutes of retries.
PROBE_TIMEOUT_S = 3.0


ARTIFACT_ROOT_ENV = "CVFLOW_ARTIFACT_ROOT"


def home_dir() -> Path:
    """The home folder (``$CVFLOW_HOME``, default ``./.cvflow``), absolute; not created."""
    return Path(os.environ.get("CVFLOW_HOME") or ".cvflow").expanduser().resolve()


def cvflow_home() -> Path:
    """The home folder (:func:`home_dir`), created."""
    home = home_dir()
    home.mkdir(parents=True, exist_ok=True)
    return home


def embedded_uri(home: Path | None = None) -> str:
    """The embedded SQLite tracking + registry store: ``sqlite:///<home>/mlflow.db``."""
    return f"sqlite:///{(home or cvflow_home()) / 'mlflow.db'}"


def tracking_uri(home: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else the embedded SQLite store under the home folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(home)


def uses_embedded_store(home: Path | None = None) -> bool:
    """True when MLflow runs on cvflow's embedded SQLite store (no tracking server was given).

    Compared by value: ``mlflow.set_tracking_uri`` exports the URI it was given to the
    environment, so the variable being set does not mean the user set it.
    """
    return tracking_uri(home) == embedded_uri(home)


def artifact_root(home: Path | None = None) -> str | None:
    """Artifact location for new experiments on the embedded store: ``$CVFLOW_ARTIFACT_ROOT``
    (e.g. ``s3://bucket/mlartifacts``; MLflow reads the ``AWS_*`` / ``MLFLOW_S3_ENDPOINT_URL``
    variables) when set, else ``<home>/mlartifacts``. Existing experiments keep their location.

    With a tracking server the server decides (None), so clients never write to paths only
    this machine has.
    """
    if not uses_embedded_store(home):
        return None
    if root := os.environ.get(ARTIFACT_ROOT_ENV):
        return root
    return ((home or cvflow_home()) / "mlartifacts").as_uri()


def mlflow_client(home: Path | None = None) -> MlflowClient:
    """A client on :func:`tracking_uri`; also makes it the process default for ``mlflow.*`` calls.

    Raises TrackingUnavailable naming the URI when its scheme is not an MLflow store or a
    tracking server does not answer (:func:`check_tracking_uri`).
    """
    uri = tracking_uri(home)
    check_tracking_uri(uri)
    # Creating the SQLite schema logs a few INFO lines per new store; they are noise here.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)  # the registry follows the tracking URI (MLflow's default)
    return MlflowClient(uri)


def check_tracking_uri(uri: str, *, timeout: float = PROBE_TIMEOUT_S) -> None:
    """TrackingUnavailable, in one line naming ``uri``, unless MLflow has a store for its scheme
    and, for a server (http/https), the server answers its ``/health`` within ``timeout`` s."""
    _check_scheme(uri)
    if uri.startswith(("http://", "https://")):
        _probe_server(uri, timeout=timeout)


def _check_scheme(uri: str) -> None:
    # MLflow's own table of tracking stores (private, so tolerate its absence): the error it
    # raises itself comes only when the first run is created, deep inside a flow.
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry as stores

    try:
        stores.get_store_builder(uri)
    except MlflowException:
        schemes = ", ".join(sorted(s for s in getattr(stores, "_registry", {}) if s)) or "see MLflow's docs"
        raise TrackingUnavailable(
            f"tracking URI {uri!r}: MLflow has no store for its scheme; schemes: {schemes}, or a plain path"
        ) from None


def _probe_server(uri: str, *, timeout: float) -> None:
    # One GET without retries. Any answer of the server (401/403: credentials are checked by the
    # real calls) means it is there; a refused connection, a timeout or another status is not.
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(
            url, timeout=timeout, context=_tls_context() if url.startswith("https://") else None
        ):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return
        reason = f"GET {url} answered {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        cause = getattr(exc, "reason", exc)
        reason = (
            f"no answer within {timeout:g} s" if isinstance(cause, TimeoutError) else str(cause) or type(cause).__name__
        )
    raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable: {reason}")


def _tls_context() -> ssl.SSLContext:
    """TLS as MLflow's client would verify it (its MLFLOW_TRACKING_* certificate settings)."""
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    if re.fullmatch(r"(?i)true|1", os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "")):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def ensure_experiment(client: MlflowClient, name: str = DEFAULT_EXPERIMENT) -> str:
    """The id of experiment ``name``, created (with the home's artifact root) when missing.

    It carries ``mlflow.experimentKind = custom_model_development``, so the MLflow UI opens it in
    its model-training view; an existing experiment without a kind gets it (a kind someone chose
    is kept).
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            experiment_id = client.create_experiment(
                name, artifact_location=artifact_root(), tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
            )
        except MlflowException:
            # Another process created it between our lookup and create.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
        else:
            return experiment_id
    if TAG_EXPERIMENT_KIND not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return exp.experiment_id


def set_description(client: MlflowClient, run_id: str, text: str) -> None:
    """The run's description in the MLflow UI (the ``mlflow.note.content`` tag, markdown)."""
    client.set_tag(run_id, TAG_NOTE, text[:5000])


def code_version() -> str:
    """The git commit of the cvflow checkout (``-dirty`` with local changes), else the package version."""
    return _code_version()


@functools.cache
def _code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root, capture_output=True, timeout=5)
        return commit + ("-dirty" if dirty.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return version("cvflow")
        except PackageNotFoundError:
            return "unknown"


def run_tags(
    snapshot: Snapshot | SnapshotRef, *, model_name: str, flow_name: str, flow_run_id: str | None
) -> dict[str, str]:
    """The tags every pipeline run carries (dataset, model, flow run, code version)."""
    commit = code_version()
    tags = {
        TAG_DATASET: snapshot.name,
        TAG_DATASET_DIGEST: snapshot.digest,
        TAG_SNAPSHOT: str(snapshot.path),
        TAG_MODEL: model_name,
        TAG_TASK: snapshot.task,
        TAG_FLOW: flow_name,
        TAG_FLOW_RUN: flow_run_id or "",
        TAG_CODE_VERSION: commit,
    }
    if len(commit.split("-")[0]) == 40:
        tags[MLFLOW_GIT_COMMIT] = commit.split("-")[0]  # the MLflow UI shows this one
    return tags


def open_run(client: MlflowClient, experiment_id: str, *, run_name: str, tags: Mapping[str, str]) -> str:
    """Create a RUNNING MLflow run and return its id (the flow passes it to every task)."""
    run = client.create_run(experiment_id, run_name=run_name, tags={MLFLOW_RUN_NAME: run_name, **tags})
    return run.info.run_id


def close_run(client: MlflowClient, run_id: str, *, error: BaseException | None = None) -> None:
    """Mark the run FINISHED, or FAILED with the cause as a tag (shown in the MLflow UI)."""
    if error is not None:
        client.set_tag(run_id, TAG_FAILURE, f"{type(error).__name__}: {error}"[:4000])
        client.set_terminated(run_id, status="FAILED")
    else:
        client.set_terminated(run_id, status="FINISHED")


@contextmanager
def run_closed_after(client: MlflowClient, run_id: str) -> Iterator[str]:
    """Close ``run_id`` when the block ends: FINISHED, or FAILED with the cause when it raises
    (the exception then goes on). Yields the run id."""
    try:
        yield run_id
    except BaseException as exc:
        close_run(client, run_id, error=exc)
        raise
    close_run(client, run_id)


def log_config(client: MlflowClient, run_id: str, config: RunConfig) -> None:
    """The whole config once, flattened to ``section.field`` params (cvcore.config.flatten)."""
    params = [Param(k, v[:6000]) for k, v in sorted(flatten(config).items())]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    client.log_dict(run_id, config.model_dump(mode="json"), "config.json")


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> None:
    """Log scalar metrics in batches. NaN is logged as NaN (e.g. AP of a size range without ground
    truth: "undefined" is the honest value, and the COCO summary keeps all twelve numbers)."""
    now = int(time.time() * 1000)
    rows = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items() if v is not None]
    for i in range(0, len(rows), _BATCH):
        client.log_batch(run_id, metrics=rows[i : i + _BATCH])


def _metric_key(name: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space : / only; class names may hold anything else.
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in name)


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_dataset(client: MlflowClient, run_id: str, snapshot_path: Path, *, splits: Iterable[str]) -> None:
    """Log each split of a snapshot as an MLflow dataset input, with the snapshot's digest.

    The input's digest is the snapshot digest's first 16 hex digits (MLflow's column holds 36
    characters); the full digest is the ``cvflow.dataset_digest`` tag.
    """
    from mlflow.data.sources import LocalArtifactDatasetSource

    from cvcore.data.snapshot import read_snapshot

    snapshot = read_snapshot(snapshot_path)
    inputs = []
    for split in splits:
        frame = snapshot.split_images(split)
        ds = mlflow.data.from_polars(
            frame.drop("sha256"),
            source=LocalArtifactDatasetSource(str(snapshot.path)),
            name=f"{snapshot.name}/{split}",
            digest=snapshot.digest[:16],
        )
        inputs.append(DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    client.log_inputs(run_id, datasets=inputs)


def run_url(client: MlflowClient, run_id: str) -> str:
    """Where the run opens in the MLflow UI (the tracking server, or `cvflow ui`'s local one)."""
    uri = client.tracking_uri
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://{UI_HOST}:{UI_PORT}"
    experiment_id = client.get_run(run_id).info.experiment_id
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


class EpochLogger:
    """Engine callback (cvcore.engine.train.fit): per-epoch metrics to MLflow under their names.

    The engine names them ``train/<loss>``, ``val/<metric>``, ``lr``; ``step`` is the epoch, so
    the MLflow UI draws training curves over epochs. Final evaluation numbers of the kept model
    are logged separately as ``final/<split>/<metric>``.
    """

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        log_metrics(self.client, self.run_id, {k: v for k, v in metrics.items() if _is_number(v)}, step=epoch)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
