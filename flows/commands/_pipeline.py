"""Helpers of the pipeline commands (demo, train, evaluate, compare, promote, runs, ui), and the
checks they run before any flow starts.

Flows started from the command line run on Prefect's temporary local server unless
PREFECT_API_URL names a server (Prefect's own default). Two of that server's defaults are wrong
for a first run on a small offline machine, so they change here unless the user set them: its
telemetry (an error line per run without network) and its 20 s start-up timeout (a loaded
2-core laptop can need longer).

Errors a user causes must not surface inside a flow (after the server started, under Prefect's
tracebacks, after MLflow's minutes of retries): the ``check_*`` functions below are the one place
the commands test their inputs first, with short timeouts, raising UserError (one line, exit 2).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar
from urllib.parse import urlparse

from flows.commands._common import UserError, fail

if TYPE_CHECKING:
    from cvcore.config import ModelConfig
    from cvcore.data.snapshot import Snapshot
    from cvcore.engine.checkpoint import LoadedModel

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def prefect_settings() -> Iterator[None]:
    """Run flows inside this: offline-friendly settings for Prefect's temporary server."""
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    updates = {}
    if "PREFECT_SERVER_ANALYTICS_ENABLED" not in os.environ:
        updates[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 180
    with temporary_settings(updates=updates):
        yield


def tracking_errors(fn: F) -> F:
    """For commands that use MLflow: the tracking store is checked before the command runs
    (:func:`check_tracking`), and an unusable one is a one-line error with exit code 2."""
    return _checked(fn, home=False)


def flow_errors(fn: F) -> F:
    """For commands that run a flow: :func:`tracking_errors` and a writable CVFLOW_HOME."""
    return _checked(fn, home=True)


def _checked(fn: F, *, home: bool) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from tasks.tracking import TrackingUnavailable

        try:
            if home:
                check_home()
            check_tracking()
            return fn(*args, **kwargs)
        except TrackingUnavailable as exc:
            fail(f"{exc}. Check MLFLOW_TRACKING_URI, or unset it to use the embedded store under CVFLOW_HOME.")

    return wrapper  # type: ignore[return-value]


def check_home() -> None:
    """CVFLOW_HOME (snapshots, predictions, checkpoints, the embedded store) can be written."""
    from tasks.tracking import home_dir

    check_writable_dir(home_dir(), "CVFLOW_HOME")


def check_tracking() -> None:
    """The tracking store works: MLflow knows its scheme, a server answers within seconds, the
    embedded store's folder (CVFLOW_HOME) can be written. TrackingUnavailable / UserError."""
    from tasks.tracking import check_tracking_uri, home_dir

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:  # the embedded store under CVFLOW_HOME
        check_writable_dir(home_dir(), "CVFLOW_HOME")
        return
    check_tracking_uri(uri)


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """``path`` is a folder this process may write in, or one it may create. UserError naming
    ``what`` (the option) otherwise: a file there, or a read-only folder on the way."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} cannot be written)"
        raise UserError(f"{what} {path} is not writable{where}")


def check_output_file(path: str | os.PathLike, what: str) -> None:
    """``path`` can be written as a file: not a folder, and its folder writable (UserError)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give the path of the file to write")
    check_writable_dir(path.parent, f"{what} {path}: its folder")


def check_predictions(location: str | None) -> None:
    """``--predictions``: a local folder must be writable (object-store URIs are not probed)."""
    from cvcore.io import is_uri

    if location and not is_uri(location):
        check_writable_dir(location, "--predictions")


def check_predictions_owner(
    location: str | None, checkpoint: str | os.PathLike, *, split: str, snapshot: "Snapshot | None"
) -> None:
    """``--predictions``: a local folder holding another evaluation's output is refused before any flow starts.

    The folder may hold only cvflow shards of ``checkpoint`` (its sha256) on ``split`` of
    ``snapshot`` (any snapshot when None: a source not yet ingested), in any shard count
    (cvcore.engine.shards.check_predictions_folder); otherwise a UserError names the folder and
    what it holds. The flow checks again (object-store URIs, a run from the dashboard, a folder
    filled since), before it deletes anything.
    """
    from cvcore.engine.shards import check_predictions_folder, list_shards
    from cvcore.io import file_sha256, is_uri

    if not location or is_uri(location):
        return
    folder = Path(location).expanduser().resolve()
    if not list_shards(folder):
        return  # nothing there to own (the checkpoint is not hashed for nothing)
    try:
        check_predictions_folder(
            folder,
            checkpoint_sha256=file_sha256(checkpoint),
            split=split,
            snapshot_digest=snapshot.digest if snapshot is not None else None,
        )
    except ValueError as exc:
        raise UserError(f"--predictions: {exc}") from None


def check_dask_address(address: str, *, timeout: float | None = None) -> None:
    """A Dask scheduler listens at ``address`` (TCP connect within ``timeout`` s; UserError)."""
    from tasks.tracking import PROBE_TIMEOUT_S

    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "tls", "ws", "wss"):
        return  # other comms (inproc, ucx) are Dask's to check
    try:
        host, port = parsed.hostname, parsed.port or 8786
    except ValueError:
        host = None
    if not host:
        raise UserError(f"--dask-address {address!r}: expected a scheduler address such as tcp://HOST:8786")
    try:
        with socket.create_connection((host, port), timeout=timeout or PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or type(exc).__name__
        raise UserError(f"--dask-address {address}: no Dask scheduler answers at {host}:{port} ({reason})") from None


def check_splits(snapshot: "Snapshot", splits: Iterable[str], *, what: str = "--split") -> None:
    """The snapshot holds images, and some in each of ``splits`` (UserError naming them)."""
    if not snapshot.splits:
        raise UserError(f"snapshot {snapshot.path} holds no images; nothing to train on or evaluate")
    for split in splits:
        if split not in snapshot.splits:
            raise UserError(
                f"{what} {split!r}: snapshot {snapshot.path} has no such split; its splits are {snapshot.splits}"
            )


def check_checkpoint(path: str | os.PathLike, *, what: str = "--model") -> "LoadedModel":
    """The model a cvflow checkpoint (or run folder) holds, checked and loaded safely.

    The file is read with ``weights_only=True`` first, so a crafted or foreign file is refused
    in one line (UserError / ValueError naming it) and never reaches a flow; then the model is
    rebuilt from its meta and its weights loaded, as the flow will.
    """
    from cvcore.engine.checkpoint import META_KEYS, load_model, resolve_checkpoint
    from cvcore.models.pretrained import load_weights_only

    file = resolve_checkpoint(Path(path).expanduser())
    state = load_weights_only(file)
    meta = state.get("meta") if isinstance(state, dict) else None
    if not isinstance(meta, dict) or "model" not in state:
        raise UserError(f"{what} {file}: not a cvflow checkpoint (expected a dict with 'model' and 'meta')")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise UserError(f"{what} {file}: not a cvflow checkpoint, its meta lacks {missing}")
    bad = _bad_meta(meta)
    if bad:
        raise UserError(f"{what} {file}: not a cvflow checkpoint, its meta {bad}")
    try:
        return load_model(file)
    except ValueError as exc:  # the builder's (an unknown option), named after the file
        if str(file) in str(exc):
            raise
        raise UserError(f"{what} {file}: {exc}") from None


def _bad_meta(meta: dict[str, Any]) -> str | None:
    """What is wrong with the types of a checkpoint's meta (the builder would fail on it), or None."""
    if not isinstance(meta["model_name"], str):
        return f"model_name is {meta['model_name']!r}, not a name"
    if not isinstance(meta["num_classes"], int) or isinstance(meta["num_classes"], bool):
        return f"num_classes is {meta['num_classes']!r}, not a count"
    if meta["img_size"] is not None and not isinstance(meta["img_size"], int):
        return f"img_size is {meta['img_size']!r}, not pixels"
    if not isinstance(meta["options"], dict) or not all(isinstance(k, str) for k in meta["options"]):
        return f"options is {type(meta['options']).__name__}, not a mapping of option names"
    return None


def check_model_uri(model: str, *, what: str = "--model") -> "LoadedModel":
    """``model`` (a checkpoint, a run folder, models:/NAME@ALIAS, runs:/ID/model) resolves to a
    checkpoint that loads. A registry model is fetched to CVFLOW_HOME/models once, as the flow does."""
    from tasks.registry import is_model_uri, resolve_checkpoint

    local = resolve_checkpoint.fn(model) if is_model_uri(model) else model
    return check_checkpoint(local, what=what)


def check_weights_file(pretrained: str | None, *, what: str = "--pretrained") -> None:
    """A local ``--pretrained`` file reads as a state dict (safely); "torchvision" and model URIs
    are left to :func:`check_model_config` and the registry."""
    from cvcore.models.pretrained import read_state_dict
    from tasks.registry import is_model_uri

    if not pretrained or pretrained == "torchvision" or is_model_uri(pretrained):
        return
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise UserError(
            f"{what} {pretrained}: no such file (give a weights file, a checkpoint, torchvision or models:/NAME@ALIAS)"
        )
    read_state_dict(path)


def check_model_config(model: "ModelConfig", *, img_size: int) -> None:
    """The model builds with its options and loads its ``pretrained`` weights as the run will
    (ValueError / UserError naming what is wrong). A registry URI is fetched once first."""
    from cvcore.models import build_model
    from tasks.registry import is_model_uri, resolve_checkpoint

    pretrained = model.pretrained
    if pretrained and is_model_uri(pretrained):
        pretrained = str(resolve_checkpoint.fn(pretrained))
    check_weights_file(pretrained, what="pretrained weights")
    build_model(
        model.name, num_classes=model.num_classes or 1, pretrained=pretrained, img_size=img_size, **model.options
    )


def check_model_name(name: str) -> None:
    """Fail fast (before any server starts) on an unknown model: ValueError listing the known ones."""
    from cvcore.models import model_spec

    model_spec(name)


def ui_commands(*, host: str = "127.0.0.1", mlflow_port: int = 5000, prefect_port: int = 4200) -> dict[str, list[str]]:
    """The commands that open the MLflow UI on this cvflow home's store and the Prefect dashboard."""
    from tasks.tracking import cvflow_home, tracking_uri

    home = cvflow_home()
    commands = {"prefect": ["prefect", "server", "start", "--host", host, "--port", str(prefect_port)]}
    store = tracking_uri(home)
    if not store.startswith(
        ("http://", "https://")
    ):  # a store, not a server: open a UI on it (embedded or MLFLOW_TRACKING_URI)
        commands["mlflow"] = ["mlflow", "ui", "--backend-store-uri", store, "--host", host, "--port", str(mlflow_port)]
    return commands
