"""One validated configuration object per run (docs/ARCHITECTURE.md §6), and its precedence.

Two types of the same shape:

- ``RunConfig``: a full config, every field a value; what a run uses and what is logged to MLflow
  once (flattened) and written to the run folder's ``config.yaml``. Its field defaults are
  cvflow's own defaults, :data:`CVFLOW_DEFAULTS` (``RunConfig()``).
- ``PartialRunConfig``: the same fields, each ``None`` (= unset) unless given, with the same types
  and bounds; what a user writes in ``run.yaml`` (:func:`load_config`) or a form, and what a model
  registers as its defaults (cvcore.models.register_model).

One pure function decides: :func:`resolve` ``(user, model_defaults, base)`` takes each field from
the first of the three that sets it: the user's value, else the model's default, else cvflow's.
Unknown keys are errors everywhere (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class DataConfig(_Section):
    """Which snapshot and splits a run reads, and how images are loaded."""

    snapshot: Path | None = None  # snapshot folder (see cvcore.data.snapshot)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str | None = None
    img_size: int = Field(128, ge=16, description="square input size in pixels")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")


class ModelConfig(_Section):
    """Which registered model to build and which of its weights train."""

    name: str = "resnet18"
    num_classes: int | None = Field(None, ge=1, description="None: taken from the snapshot")
    pretrained: str | None = None  # None | "torchvision" | weights path | MLflow model URI
    freeze: str = "none"  # "none" | "backbone" | "from:<stage>" (stages before it are frozen)
    freeze_bn: bool = False  # keep batch-norm running statistics fixed while fine-tuning
    backbone_lr_factor: float = Field(1.0, ge=0.0, description="backbone LR = lr x this")
    options: dict[str, Any] = Field(default_factory=dict)  # model-specific keyword options


class AugmentConfig(_Section):
    """Augmentation: a named preset or an explicit transform list, plus batch/sample mixing."""

    preset: Literal["none", "light", "default", "strong"] = "default"
    transforms: list[dict[str, Any]] | None = None  # overrides the preset: [{"name": ..., **params}]
    cutmix_p: float = Field(0.0, ge=0.0, le=1.0, description="classification, per batch")
    mixup_p: float = Field(0.0, ge=0.0, le=1.0, description="classification, per batch")
    cutmix_alpha: float = Field(1.0, gt=0.0)
    mixup_alpha: float = Field(0.2, gt=0.0)
    mosaic_p: float = Field(0.0, ge=0.0, le=1.0, description="detection, per sample")
    close_mosaic: int = Field(0, ge=0, description="no Mosaic in the last N epochs")
    # Each Mosaic tile is resized so its longer side is img_size x a factor drawn from this range.
    mosaic_scale: tuple[float, float] = (0.5, 1.0)
    min_box_size: float = Field(1.0, ge=1.0, description="px at img_size; smaller boxes are dropped")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "AugmentConfig":
        # One batch gets CutMix, MixUp or neither: the two probabilities share one draw.
        if self.cutmix_p + self.mixup_p > 1.0 + 1e-9:
            raise ValueError(f"cutmix_p + mixup_p must be <= 1, got {self.cutmix_p} + {self.mixup_p}")
        lo, hi = self.mosaic_scale
        if not 0.0 < lo <= hi:
            raise ValueError(f"mosaic_scale must be (low, high) with 0 < low <= high, got {self.mosaic_scale}")
        for i, spec in enumerate(self.transforms or []):
            if not isinstance(spec.get("name"), str):
                raise ValueError(f"augment.transforms[{i}] needs a 'name' (a transforms.v2 class name), got {spec}")
        return self


class TrainConfig(_Section):
    """The optimisation loop of cvcore.engine.fit."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0)
    step_size: int = Field(10, ge=1, description="epochs between LR drops (step schedule)")
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    grad_clip: float | None = Field(10.0, ge=0.0, description="max gradient L2 norm; 0: no clipping (resolved to None)")
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0, description="None: no EMA")
    amp: bool = True  # mixed precision on CUDA (bf16 where supported); ignored on CPU
    early_stopping_patience: int | None = Field(None, ge=1)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    # Data-parallel training (cvcore.engine.distributed): batch_size is the global batch, split evenly.
    devices: int | Literal["auto"] = Field(
        1, description="processes per machine (one per GPU, or CPU processes); auto: every visible GPU"
    )
    sync_bn: bool = False  # batch-norm statistics over all GPUs' images (SyncBatchNorm, CUDA only)
    dist_timeout_s: float = Field(
        900.0, gt=0.0, description="seconds a rank waits in a collective before the run fails"
    )
    channels_last: bool = True  # classification on CUDA: model and batches in channels-last layout
    compile: bool = False  # torch.compile the training forward pass

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"devices must be a positive number or 'auto', got {value}")
        return value

    @field_validator("grad_clip")
    @classmethod
    def _no_clip(cls, value: float | None) -> float | None:
        # 0 is how a partial config says "no clipping" (its None means unset); the engine reads None.
        return None if value == 0 else value


class EvalConfig(_Section):
    """How predictions are scored."""

    protocol: Literal["coco", "voc07", "voc12"] = "coco"
    score_threshold: float = Field(0.001, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1)
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)
    bootstrap_samples: int = Field(200, ge=0)
    seed: int = 0


class RunConfig(_Section):
    """Everything one run needs; logged to MLflow once, flattened."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


CVFLOW_DEFAULTS = RunConfig()  # cvflow's own defaults: the last layer of every resolution


def _blank_means(section: str, name: str) -> Callable[[dict[str, Any]], None]:
    """The JSON schema of one partial field, completed when a schema is made (a form's): no
    ``default`` (None is unset: a form shows the field blank, not "null"), and the registered
    models' defaults for it in the description, so a form says what a blank field becomes."""

    def complete(schema: dict[str, Any]) -> None:
        from cvcore.models import list_models, model_spec  # the registry imports this module

        schema.pop("default", None)
        by_value: dict[str, list[str]] = {}
        for model in list_models():
            value = getattr(getattr(model_spec(model).defaults, section), name)
            if value is not None:
                by_value.setdefault(repr(value), []).append(model)
        if by_value:
            listed = "; ".join(f"{value} for {', '.join(models)}" for value, models in by_value.items())
            schema["description"] = f"{schema.get('description', '')} [models' defaults: {listed}]"

    return complete


def _partial(section: type[_Section], section_name: str) -> type[_Section]:
    """``section`` with every field optional and ``None`` (= unset) by default.

    A set value is checked with the field's own type and bounds; checks across fields (e.g.
    ``cutmix_p + mixup_p <= 1``) run on the resolved :class:`RunConfig`. Each description ends
    with what an unset field becomes.
    """
    fields: dict[str, Any] = {}
    for name, info in section.model_fields.items():
        fallback = info.get_default(call_default_factory=True)
        note = f"(blank: the model's default, else {fallback!r})"
        description = f"{info.description} {note}" if info.description else note
        annotation = (
            Annotated[Optional[info.annotation], *info.metadata] if info.metadata else Optional[info.annotation]
        )
        fields[name] = (
            annotation,
            Field(None, description=description, json_schema_extra=_blank_means(section_name, name)),
        )
    doc = f"{section.__name__} with every field optional: None means unset (see cvcore.config.resolve)."
    return create_model(f"Partial{section.__name__}", __base__=_Section, __doc__=doc, **fields)


class _PartialRun(_Section):
    @model_validator(mode="before")
    @classmethod
    def _from_run_config(cls, data: Any) -> Any:
        # A RunConfig handed over as a user's config (Python callers, tests) counts the fields it
        # was built with, as before partial configs existed; every other field stays unset. A
        # resolved RunConfig (every field set) gives itself back from resolve.
        if isinstance(data, RunConfig):
            return _null_means_off(data.model_dump(exclude_unset=True))
        return data

    @property
    def chosen_model(self) -> str:
        """The model this config trains: ``model.name``, else cvflow's default model."""
        return self.model.name or CVFLOW_DEFAULTS.model.name

    def settings(self) -> dict[str, dict[str, Any]]:
        """``{section: {field: value}}`` of the fields that are set (not None), sections without any left out."""
        dumped = self.model_dump(exclude_none=True)
        return {section: values for section, values in dumped.items() if values}


_PARTIAL_SECTIONS = {name: _partial(info.annotation, name) for name, info in RunConfig.model_fields.items()}
PartialRunConfig = create_model(
    "PartialRunConfig",
    __base__=_PartialRun,
    __doc__="A RunConfig whose unset fields are None: a user's config or a model's defaults (cvcore.config.resolve).",
    **{name: (section, section()) for name, section in _PARTIAL_SECTIONS.items()},
)
NO_SETTINGS = PartialRunConfig()  # every field unset

# Before unset was None, a file's explicit null set a field to None; for a field cvflow defaults
# to a value that null meant "none of it". It keeps that meaning: the value here says it.
_NULL_IN_FILES = {("train", "grad_clip"): 0.0}


def _null_means_off(raw: Mapping[str, Any]) -> dict[str, Any]:
    data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for (section, name), off in _NULL_IN_FILES.items():
        if isinstance(data.get(section), dict) and name in data[section] and data[section][name] is None:
            data[section][name] = off
    return data


def overlay(*layers: BaseModel) -> PartialRunConfig:
    """Field by field, the value of the first layer that sets it (is not None).

    ``layers`` are PartialRunConfigs or RunConfigs (whose every field is set), highest precedence
    first. ``model.options`` dicts merge key by key instead, a higher layer's keys winning. Pure.
    """
    merged: dict[str, dict[str, Any]] = {}
    for section in RunConfig.model_fields:
        values: dict[str, Any] = {}
        for layer in reversed(layers):
            for name, value in getattr(layer, section):
                if value is None:
                    continue
                if (section, name) == ("model", "options"):
                    value = {**values.get(name, {}), **value}
                values[name] = value
        merged[section] = values
    return PartialRunConfig.model_validate(merged)


def resolve(
    user: PartialRunConfig, model_defaults: PartialRunConfig | None = None, base: RunConfig = CVFLOW_DEFAULTS
) -> RunConfig:
    """The config a run uses: each field from ``user`` if set, else ``model_defaults``, else ``base``.

    ``model.options`` merge (the user's keys over the model's). Pure: nothing is read or logged.
    Raises ValueError (pydantic's ValidationError) when the result breaks a check across fields.
    """
    merged = overlay(user, model_defaults or NO_SETTINGS, base)
    return RunConfig.model_validate(merged.model_dump())


def sources(user: PartialRunConfig, model_defaults: PartialRunConfig | None = None) -> dict[str, str]:
    """Where :func:`resolve` takes each field from: ``{"data.img_size": "model", "train.epochs": "user", ...}``.

    Each value is ``"user"``, ``"model"`` or ``"cvflow"`` (the first layer that sets the field);
    ``model.options`` is ``"user"`` when the user set any option (the model's keys merge under).
    """
    layers = (("user", user), ("model", model_defaults or NO_SETTINGS))
    out: dict[str, str] = {}
    for section in RunConfig.model_fields:
        for name in RunConfig.model_fields[section].annotation.model_fields:
            given = [who for who, layer in layers if getattr(getattr(layer, section), name) is not None]
            out[f"{section}.{name}"] = given[0] if given else "cvflow"
    return out


def partial_config(raw: Mapping[str, Any]) -> PartialRunConfig:
    """A config mapping as files hold it (``run.yaml``, a run folder's ``config.yaml``, a checkpoint's
    ``meta["config"]``) as a PartialRunConfig: absent keys are unset, and so is an explicit null,
    except where a null always meant "none of it" (``train.grad_clip: null``: no clipping).

    Raises ValueError (pydantic's ValidationError) for unknown keys or bad values.
    """
    return PartialRunConfig.model_validate(_null_means_off(raw))


def load_config(path: str | Path) -> PartialRunConfig:
    """Read a ``run.yaml`` (``yaml.safe_load``) into a validated PartialRunConfig (:func:`partial_config`).

    Checks across fields run on the file's values over cvflow's defaults, as a run would see them
    before its model's defaults. Raises ValueError naming the file when it is not YAML (one line:
    the problem and where), uses a tag that would build a Python object (refused by the safe
    loader), nests too deeply, is not a mapping or does not validate.
    """
    path = Path(path)
    try:
        raw = _read_yaml(path)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a run config") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(raw).__name__}")
    try:
        config = partial_config(raw)
        resolve(config)
        return config
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a run config") from None
    except ValueError as exc:
        raise ValueError(f"{path}: invalid config:\n{exc}") from None


# A run.yaml is a few KB and a few hundred values; more is not a config (/dev/zero, a data file,
# or YAML aliases nesting lists into a "billion laughs" that validation would walk for minutes).
_CONFIG_MAX_BYTES = 1 << 20
_CONFIG_MAX_VALUES = 100_000


def _read_yaml(path: Path) -> Any:
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    try:
        with path.open("rb") as fh:
            data = fh.read(_CONFIG_MAX_BYTES + 1)
        if len(data) > _CONFIG_MAX_BYTES:
            raise ValueError(f"{path}: larger than {_CONFIG_MAX_BYTES} bytes, not a run config")
        raw = yaml.safe_load(data.decode("utf-8")) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "unreadable"
        if isinstance(exc, yaml.constructor.ConstructorError):
            raise ValueError(
                f"{path}{where}: {problem}; only plain YAML values are read (tags that build Python objects are refused)"
            ) from None
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    if _expanded_size(raw, {}) > _CONFIG_MAX_VALUES:
        raise ValueError(f"{path}: expands to over {_CONFIG_MAX_VALUES} values (YAML aliases), not a run config")
    return raw


def _expanded_size(value: Any, seen: dict[int, int]) -> int:
    """How many values ``value`` holds once YAML aliases are expanded (each shared node counted
    where it is used), computed once per node (``seen``: id -> size), so a bomb is measured fast."""
    key = id(value)
    if key not in seen:
        if isinstance(value, dict):
            seen[key] = 1 + sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in value.items())
        elif isinstance(value, list):
            seen[key] = 1 + sum(_expanded_size(v, seen) for v in value)
        else:
            seen[key] = 1
    return seen[key]


def flatten(config: BaseModel, prefix: str = "") -> dict[str, str]:
    """``{"train.lr": "0.001", ...}``: the config as flat string params (for MLflow)."""
    out: dict[str, str] = {}
    for key, value in config:
        name = f"{prefix}{key}"
        if isinstance(value, BaseModel):
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = str(value)
    return out
