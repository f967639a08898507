"""One validated configuration object per run (docs/ARCHITECTURE.md §6).

``RunConfig`` is what a user writes in ``run.yaml`` and what is logged to MLflow once, flattened.
Each section is a frozen pydantic model with defaults that just work on the built-in data; unknown
keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    grad_clip: float | None = Field(10.0, gt=0.0)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0, description="None: no EMA")
    amp: bool = True  # mixed precision on CUDA (bf16 where supported); ignored on CPU
    early_stopping_patience: int | None = Field(None, ge=1)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...


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


def load_config(path: str | Path) -> RunConfig:
    """Read a ``run.yaml`` (``yaml.safe_load``) into a validated RunConfig.

    Raises ValueError naming the file when it is not YAML (one line: the problem and where), uses
    a tag that would build a Python object (refused by the safe loader), nests too deeply, is not
    a mapping or does not validate.
    """
    path = Path(path)
    try:
        raw = _read_yaml(path)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a run config") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a run config") from None
    except ValueError as exc:
        raise ValueError(f"{path}: invalid config:\n{exc}") from None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "unreadable"
        if isinstance(exc, yaml.constructor.ConstructorError):
            raise ValueError(f"{path}{where}: {problem}; only plain YAML values are read (tags that build Python objects are refused)") from None
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None


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
