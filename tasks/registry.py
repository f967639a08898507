"""Model registry tasks: log a checkpoint as an MLflow 3 model, register it, move aliases.

Aliases: every new version becomes ``challenger``; the first version of a registered model also
becomes ``champion`` (nothing to compare it with). Later promotions are decided by the nightly
flow (or by hand with ``cvflow promote``).
"""

from __future__ import annotations

import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version as _version
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from prefect import task
from prefect.logging import get_run_logger

import cvcore
from tasks.refs import ModelVersionRef
from tasks.tracking import cvflow_home, mlflow_client

CHAMPION, CHALLENGER = "champion", "challenger"
CHECKPOINT_ARTIFACT = "checkpoint"  # the key tasks/mlflow_model.py reads the checkpoint under
_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
_REQUIREMENTS = ("torch", "torchvision", "numpy", "pandas", "polars", "pyarrow", "pillow", "pydantic", "pyyaml")


@task(name="log-model", retries=2, retry_delay_seconds=[2, 10])
def log_model(run_id: str, checkpoint: Path) -> str:
    """Log ``checkpoint`` to the run as a pyfunc model named ``model``; returns its model URI.

    Signature and input example come from the checkpoint's metadata (task, img_size). cvcore and
    the wrapper travel with the model, so it loads without cvflow installed.
    """
    from cvcore.engine.checkpoint import load_checkpoint

    meta = load_checkpoint(checkpoint)["meta"]
    client = mlflow_client()  # also makes the tracking URI the process default, which Model.log uses
    run = client.get_run(run_id)
    # Created here, in the run's experiment: Model.log on its own would file the model under the
    # process's active experiment (the Default one), not the run's.
    logged = client.create_logged_model(
        run.info.experiment_id,
        name="model",
        source_run_id=run_id,
        params=dict(run.data.params),
        model_type=meta["task"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        # One fixed artifact name (checkpoint.pt) whatever the run folder called it (best.pt).
        staged = Path(tmp) / "checkpoint.pt"
        shutil.copyfile(checkpoint, staged)
        info = _log_pyfunc(run_id, staged, meta, model_id=logged.model_id)
    get_run_logger().info(
        "logged model %s (%s, %s classes)", info.model_uri, meta.get("model_name"), meta.get("num_classes")
    )
    return info.model_uri


def _log_pyfunc(run_id: str, checkpoint: Path, meta: dict, *, model_id: str):
    # Model.log, unlike mlflow.pyfunc.log_model, takes run_id: the fluent active run is per
    # thread and this task runs in a Prefect worker thread (docs/ARCHITECTURE.md §1).
    return Model.log(
        artifact_path=None,  # deprecated in MLflow 3 in favour of name=, but still positional
        name="model",
        flavor=mlflow.pyfunc,
        run_id=run_id,
        model_id=model_id,
        python_model=str(_MODEL_CODE),  # model from code: no pickled Python object to trust
        artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
        code_paths=[str(Path(cvcore.__file__).parent)],
        signature=signature(task=meta["task"], img_size=int(meta["img_size"])),
        input_example=input_example(img_size=int(meta["img_size"])),
        pip_requirements=_requirements(),
        metadata={k: meta[k] for k in ("model_name", "task", "num_classes", "class_names", "img_size") if k in meta},
    )


_CLASSIFICATION_OUTPUT = Schema(
    [
        ColSpec("long", "image_index"),
        ColSpec("integer", "category_id"),
        ColSpec("string", "category"),
        ColSpec("double", "score"),
    ]
)
_DETECTION_OUTPUT = Schema(
    list(_CLASSIFICATION_OUTPUT.inputs) + [ColSpec("double", k) for k in ("x1", "y1", "x2", "y2")]
)


def signature(*, task: str, img_size: int) -> ModelSignature:
    """The pyfunc's signature: float32[B, 3, img_size, img_size] in [0, 1] in, one row per prediction out."""
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, 3, img_size, img_size))])
    return ModelSignature(inputs=inputs, outputs=_DETECTION_OUTPUT if task == "detection" else _CLASSIFICATION_OUTPUT)


def input_example(*, img_size: int) -> np.ndarray:
    """One mid-grey image: float32[1, 3, img_size, img_size]."""
    return np.full((1, 3, img_size, img_size), 0.5, dtype=np.float32)


def _requirements() -> list[str]:
    # Explicit pins: MLflow would otherwise infer them by importing the model in a subprocess,
    # which costs seconds per run and cannot see cvcore's own dependencies.
    out = []
    for pkg in _REQUIREMENTS:
        try:
            out.append(f"{pkg}=={_version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


@task(name="register-model", retries=2, retry_delay_seconds=[2, 10])
def register_model(model_uri: str, *, name: str, run_id: str, tags: dict[str, str] | None = None) -> ModelVersionRef:
    """Register ``model_uri`` as a new version of ``name`` and make it the ``challenger``.

    The first version of ``name`` also becomes ``champion``.
    """
    client = mlflow_client()
    mv = mlflow.register_model(model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    aliases = [CHALLENGER]
    if champion_version(name) is None:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
        aliases.append(CHAMPION)
    get_run_logger().info("registered %s version %s as %s", name, mv.version, " and ".join(aliases))
    return ModelVersionRef(name=name, version=str(mv.version), run_id=run_id, aliases=tuple(aliases))


def champion_version(name: str) -> str | None:
    """The version holding ``@champion`` in registered model ``name``, or None."""
    return alias_version(name, CHAMPION)


def alias_version(name: str, alias: str) -> str | None:
    """The version holding ``@alias`` in registered model ``name``; None when either is missing."""
    client = mlflow_client()
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> ModelVersionRef:
    """Point ``@alias`` of ``name`` at ``version`` (ValueError naming what does not exist)."""
    client = mlflow_client()
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=100)]
        raise ValueError(f"no version {version} of registered model {name!r}; registered models: {known}") from None
    client.set_registered_model_alias(name, alias, str(version))
    aliases = client.get_model_version(name, str(version)).aliases
    return ModelVersionRef(name=name, version=str(mv.version), run_id=mv.run_id or "", aliases=tuple(aliases))


def is_model_uri(model: str) -> bool:
    """True for MLflow model URIs (``models:/...``, ``runs:/...``) rather than local paths."""
    return model.startswith(("models:/", "runs:/", "mlflow-artifacts:/")) or "://" in model


@task(name="resolve-model", retries=2, retry_delay_seconds=[2, 10])
def resolve_checkpoint(model: str) -> Path:
    """The local checkpoint of ``model``: a checkpoint file or run folder, or an MLflow model URI.

    ``models:/name@alias`` is pinned to the version the alias points at now, and
    ``models:/name/version`` / ``runs:/<id>/model`` are downloaded once to
    ``<CVFLOW_HOME>/models/`` (a version's files never change). Raises ValueError naming the
    model when it cannot be found.
    """
    if not is_model_uri(model):
        from cvcore.engine.checkpoint import resolve_checkpoint as local_checkpoint

        return local_checkpoint(Path(model).expanduser()).resolve()
    mlflow_client()
    uri = _pin_alias(model)
    dst = cvflow_home() / "models" / _safe_name(uri)
    found = sorted(dst.rglob("checkpoint.pt")) if dst.is_dir() else []
    if not found:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        except MlflowException as exc:
            raise ValueError(f"cannot load model {model}: {exc.message.splitlines()[0]}") from None
        found = sorted(local.rglob("checkpoint.pt"))
    if not found:
        raise ValueError(f"model {model} has no checkpoint.pt artifact; was it logged by cvflow?")
    return found[0]


def _pin_alias(uri: str) -> str:
    """``models:/name@alias`` → ``models:/name/<version>``; other URIs unchanged."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    name, alias = uri[len("models:/") :].rsplit("@", 1)
    version = alias_version(name, alias)
    if version is None:
        raise ValueError(f"registered model {name!r} has no @{alias} version (or does not exist); see `cvflow runs`")
    return f"models:/{name}/{version}"


def _safe_name(uri: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in uri)
