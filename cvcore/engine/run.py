"""A whole training run from one RunConfig: snapshot → model → loaders → ``fit`` → run folder.

``train_run`` is what ``cvflow train`` calls and what the Prefect train pipeline reuses; it owns
the choices a bare ``fit`` leaves to its caller: the resolved config (:func:`resolve_run_config`), the number of classes, the
seed before the model's initialisation, freezing, checkpoint ``meta`` and ``config.yaml``.

A run folder is cvflow's: it holds the marker file ``.cvflow-run`` (written when a run first
claims the folder; a folder with a ``last.pt`` from before markers counts too). A folder that
holds anything else is refused rather than having a user's ``config.yaml`` or ``metrics.json``
overwritten, and a training holds the folder's lock (cvcore.engine.locks) from start to end, so
a second training into the same folder fails at once instead of crossing its weights.

With ``train.devices`` > 1 (or several machines, :class:`cvcore.engine.distributed.Nodes`) the
run is data-parallel: this process keeps the folder's lock and launches the ranks through
torchrun's launcher (cvcore.engine.distributed.launch); each rank builds the model and its share
of the loaders and runs ``fit``; rank 0 writes the folder. Other machines join with :func:`join_run`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import yaml

from cvcore.config import CVFLOW_DEFAULTS, PartialRunConfig, RunConfig, overlay, resolve
from cvcore.data.snapshot import Snapshot, read_snapshot
from cvcore.engine.checkpoint import LAST
from cvcore.engine.distributed import Dist, Nodes, devices_per_node, launch, run_rank
from cvcore.engine.locks import LOCK_FILE, check_not_in_use, folder_lock
from cvcore.engine.train import FitResult, fit, seed_everything
from cvcore.io import atomic_write, remove_temporaries

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
RUN_MARKER = ".cvflow-run"  # present in every folder cvflow trains into


def is_run_folder(folder: str | Path) -> bool:
    """True when ``folder`` is a cvflow run folder: it has the marker, or a ``last.pt`` (runs from before markers)."""
    folder = Path(folder)
    return (folder / RUN_MARKER).is_file() or (folder / LAST).is_file()


def check_run_folder(out_dir: str | Path, *, resume: bool | str | Path | None) -> None:
    """Raise unless a training may write into ``out_dir``; writes nothing.

    ``resume``: the checkpoint being resumed (or True when resuming from one not named here;
    False/None when not resuming). Fine: a missing or empty folder, or a cvflow run folder
    (:func:`is_run_folder`) without a ``last.pt`` or resumed. Refused: a file
    (NotADirectoryError); a folder holding files that is not a run folder, whose files a run could
    overwrite (FileExistsError); a run folder with ``last.pt`` when not resuming, or when resuming
    a checkpoint of another folder, whose run would replace this one's checkpoints and history
    (FileExistsError); a folder another training holds (cvcore.engine.locks.FolderInUse).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"run folder {out_dir} is a file, not a folder")
    if not out_dir.is_dir():
        return
    if not is_run_folder(out_dir):
        others = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE)
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise FileExistsError(
                f"{out_dir} holds files ({shown}) but is not a cvflow run folder (no {RUN_MARKER}); "
                "training would overwrite them: choose a new or empty folder"
            )
    check_not_in_use(out_dir, what="training")
    if not resume and (out_dir / LAST).exists():
        raise FileExistsError(f"{out_dir} already holds a run ({LAST}); resume it or choose another output folder")
    if (
        isinstance(resume, (str, Path))
        and (out_dir / LAST).exists()
        and Path(resume).resolve().parent != out_dir.resolve()
    ):
        raise FileExistsError(
            f"{out_dir} holds another run ({LAST}); resuming {resume} there would overwrite it: "
            f"resume into {Path(resume).parent} or a new folder"
        )


def claim_run_folder(out_dir: str | Path, *, resume: bool | str | Path | None) -> Path:
    """Make ``out_dir`` a run folder (created, marker written) after :func:`check_run_folder`.

    Call it before anything else writes into the folder (the pipeline's augmentation preview).
    """
    out_dir = Path(out_dir)
    check_run_folder(out_dir, resume=resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / RUN_MARKER
    if not marker.is_file():
        with atomic_write(marker, "w") as fh:
            fh.write('{"cvflow": "run folder", "format": 1}\n')
    return out_dir


def resolve_run_config(config: PartialRunConfig | RunConfig, *, snapshot: Snapshot) -> RunConfig:
    """The config a run really uses: cvcore.config.resolve of the user's ``config``, the model's
    registered defaults and cvflow's, with ``num_classes`` and ``data.snapshot`` from the data.

    ``config`` is the user's PartialRunConfig (unset fields None); a RunConfig counts the fields
    it was built with (PartialRunConfig.model_validate). Raises ValueError for an unknown model
    (listing the known ones), a model whose task differs from the snapshot's, or a
    ``num_classes`` that contradicts the snapshot.
    """
    from cvcore.models import model_spec

    user = PartialRunConfig.model_validate(config)
    spec = model_spec(user.model.name or CVFLOW_DEFAULTS.model.name)
    if spec.task != snapshot.task:
        raise ValueError(
            f"model {spec.name!r} is a {spec.task} model, but snapshot {snapshot.path} is a {snapshot.task} dataset; "
            f"choose a {snapshot.task} model"
        )
    if user.model.num_classes is not None and user.model.num_classes != snapshot.num_classes:
        raise ValueError(
            f"model.num_classes is {user.model.num_classes}, but snapshot {snapshot.path} has {snapshot.num_classes} classes"
        )
    data = PartialRunConfig(model={"num_classes": snapshot.num_classes}, data={"snapshot": snapshot.path})
    return resolve(overlay(data, user), spec.defaults)


def train_run(
    config: PartialRunConfig | RunConfig,
    out_dir: str | Path,
    *,
    callbacks: Iterable[Any] = (),
    resume: str | Path | None = None,
    nodes: Nodes | None = None,
) -> FitResult:
    """Train the configured model on the configured snapshot into the run folder ``out_dir``.

    ``config``: the user's settings, resolved here (:func:`resolve_run_config`; a resolved
    RunConfig resolves to itself). ``out_dir`` receives ``config.yaml`` (the resolved config), ``last.pt``, ``best.pt``,
    ``metrics.json`` and ``history.parquet``. A folder that already holds a run is refused
    unless ``resume`` continues it, as is a folder holding files that is not a cvflow run folder
    (:func:`check_run_folder`). The folder's lock is held until training ends: a second training
    into it fails at once (cvcore.engine.locks.FolderInUse). Raises ValueError for a
    missing/unknown snapshot or model.

    Data-parallel when ``train.devices`` resolves to more than one process here or ``nodes`` has
    several machines (this one must be node 0): the ranks are launched, ``callbacks`` (picklable)
    run in rank 0's process, and cvcore.engine.distributed.RankFailed names the first rank that
    failed. ``metrics.json`` and the returned result record ``world_size``.
    """
    nodes = nodes or Nodes()
    if nodes.node_rank != 0:
        raise ValueError(
            f"node {nodes.node_rank} does not write the run: only node 0 calls train_run, the others join_run"
        )
    out_dir = Path(out_dir)
    check_run_folder(out_dir, resume=resume)
    if config.data.snapshot is None:
        raise ValueError("no dataset: set data.snapshot in the config (or --data on the command line)")
    snapshot = read_snapshot(config.data.snapshot)
    config = resolve_run_config(config, snapshot=snapshot)
    claim_run_folder(out_dir, resume=resume)
    with folder_lock(out_dir, what="training"):
        # Checked again under the lock: another training may have finished in this folder since.
        if resume is None and (out_dir / LAST).exists():
            raise FileExistsError(f"{out_dir} already holds a run ({LAST}); resume it or choose another output folder")
        remove_temporaries(
            out_dir
        )  # a killed training's .last.pt.<8 chars>.tmp ...: no other writer while we hold the lock
        nproc = devices_per_node(config.train.devices, config.train.device)
        if nproc * nodes.nnodes == 1:
            return _train_locked(config, snapshot, out_dir, callbacks=callbacks, resume=resume)
        log.info("training on %d process(es) x %d node(s)", nproc, nodes.nnodes)
        results = launch(_rank_main, (config, str(out_dir), tuple(callbacks), resume), nproc=nproc, nodes=nodes)
        return results[0]


def join_run(config: RunConfig | PartialRunConfig, *, nodes: Nodes, resume: bool = False) -> None:
    """Node ``nodes.node_rank`` (> 0) of a several-machine run: start this machine's ranks.

    They train with node 0's ranks and write nothing (node 0's rank 0 writes the run folder and
    reports). ``config`` must be the run's config (same model, data, batch); the snapshot and any
    ``model.pretrained`` file must exist on this machine at the configured paths. ``resume``:
    node 0 resumes its run (its rank 0 sends the checkpoint; this machine needs no copy).
    Returns when the run ends; RankFailed when a rank fails.
    """
    if nodes.node_rank == 0:
        raise ValueError("node 0 runs the training (train_run); join_run is for the other nodes")
    if config.data.snapshot is None:
        raise ValueError("no dataset: set data.snapshot in the config (or --data on the command line)")
    config = resolve_run_config(config, snapshot=read_snapshot(config.data.snapshot))
    nproc = devices_per_node(config.train.devices, config.train.device)
    launch(_rank_main, (config, None, (), "node 0's last.pt" if resume else None), nproc=nproc, nodes=nodes)


def _rank_main(
    config: RunConfig, out_dir: str | None, callbacks: tuple[Any, ...], resume: str | Path | None
) -> FitResult | None:
    """One launched rank: join the process group, train its share; rank 0 returns the result.

    ``out_dir`` None on nodes other than 0 (their ranks write nothing).
    """

    def work(d: Dist) -> FitResult | None:
        snapshot = read_snapshot(config.data.snapshot)
        result = _train_locked(config, snapshot, Path(out_dir or "."), callbacks=callbacks, resume=resume, dist=d)
        return result if d.is_main else None

    return run_rank(work, device=config.train.device, timeout_s=config.train.dist_timeout_s)


def _train_locked(
    config: RunConfig,
    snapshot: Snapshot,
    out_dir: Path,
    *,
    callbacks: Iterable[Any],
    resume: str | Path | None,
    dist: Dist | None = None,
) -> FitResult:
    """The body of :func:`train_run`, with the run folder claimed and locked and ``config`` resolved.

    ``dist``: this process's rank of a data-parallel run (None: the only process).
    """
    from cvcore.engine.data import make_loaders
    from cvcore.models import build_model
    from cvcore.models.finetune import apply_freeze

    mc = config.model

    seed_everything(config.train.seed)  # the model's random initialisation is part of the run
    model = build_model(
        mc.name, num_classes=mc.num_classes, pretrained=mc.pretrained, img_size=config.data.img_size, **mc.options
    )
    apply_freeze(model, mc.freeze, freeze_bn=mc.freeze_bn)
    loaders = (
        make_loaders(snapshot, config, rank=dist.rank, world_size=dist.world_size)
        if dist
        else make_loaders(snapshot, config)
    )
    meta = {
        "model_name": mc.name,
        "num_classes": mc.num_classes,
        "class_names": snapshot.class_names,
        "img_size": config.data.img_size,
        "options": dict(mc.options),
        "snapshot": {"path": str(snapshot.path), "name": snapshot.name, "digest": snapshot.digest},
    }
    if dist is None or dist.is_main:
        write_config(config, out_dir / CONFIG_FILE)
        log.info("training %s on %s (%d classes) into %s", mc.name, snapshot.path, mc.num_classes, out_dir)
    return fit(
        model, loaders.train, loaders.val, config=config, task=snapshot.task, out_dir=out_dir, callbacks=callbacks, resume=resume, meta=meta,
        dist=dist,
    )  # fmt: skip


def write_config(config: RunConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML (loadable by cvcore.config.load_config), atomically."""
    path = Path(path)
    with atomic_write(path, "w") as fh:
        yaml.safe_dump(config.model_dump(mode="json"), fh, sort_keys=False)
    return path


def prediction_dataset(meta: dict[str, Any], snapshot: Snapshot, split: str):
    """The eval-transformed dataset of ``split`` for a model with checkpoint ``meta``.

    Raises ValueError when the snapshot's task or classes differ from what the model learned
    (category ids would mean other things).
    """
    from cvcore.augment.pipelines import build_transforms
    from cvcore.config import AugmentConfig
    from cvcore.data.torch_dataset import dataset_for

    if meta["task"] != snapshot.task:
        raise ValueError(
            f"the model is a {meta['task']} model, but snapshot {snapshot.path} is a {snapshot.task} dataset"
        )
    if list(meta["class_names"]) != snapshot.class_names:
        raise ValueError(
            f"the model was trained on classes {list(meta['class_names'])}, snapshot {snapshot.path} has {snapshot.class_names}"
        )
    augment = AugmentConfig.model_validate(meta["config"]["augment"])
    transforms = build_transforms(augment, task=snapshot.task, img_size=int(meta["img_size"]), train=False)
    return dataset_for(snapshot, split, transforms)
