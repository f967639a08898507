"""The MLflow pyfunc wrapper around a cvflow checkpoint.

MLflow's pytorch flavour expects one tensor out; detectors return a list of dicts of varying
length, so models are logged as a pyfunc whose only artifact is our checkpoint
(``checkpoint.pt``, loadable with ``torch.load(weights_only=True)``). The cvflow pipeline itself
never goes through ``predict`` here: it downloads the checkpoint and runs cvcore's batched
inference (tasks/registry.py ``resolve_checkpoint``), so registry evaluation reproduces training
evaluation exactly. This wrapper is for everyone else (``mlflow.pyfunc.load_model``, ``mlflow
models serve``).

Input: ``float32[B, 3, S, S]`` images in [0, 1], ``S`` = the model's ``img_size`` (in the model's
metadata). Output: one row per detection (or per image, for classifiers) with ``image_index`` (the
position in the batch), ``category_id``, ``category`` (name), ``score`` and, for detectors, the box
``x1, y1, x2, y2`` in pixels of the input image.

The model is logged as "model from code" (MLflow's recommended form): this file is stored with
the model and runs at load time, so loading needs no pickle of a Python object, only this file,
cvcore (which travels along as ``code_paths``), torch and mlflow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

CHECKPOINT_ARTIFACT = "checkpoint"  # key in the pyfunc's artifacts (tasks/registry.py logs it)


class CheckpointModel(PythonModel):
    """pyfunc ``predict`` over a cvflow checkpoint (see the module docstring for the I/O)."""

    def load_context(self, context) -> None:
        from cvcore.engine.checkpoint import load_model

        self.model, self.meta = load_model(context.artifacts[CHECKPOINT_ARTIFACT])
        self.model.eval()
        self.class_names = list(self.meta.get("class_names") or [])

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images float32[B, 3, H, W] in [0, 1], got shape {tuple(x.shape)}")
        with torch.inference_mode():
            if self.meta["task"] == "detection":
                return self._detections(self.model(list(x)))
            return self._classifications(torch.softmax(self.model(x).float(), dim=1))

    def _name(self, category_id: int) -> str:
        return self.class_names[category_id] if 0 <= category_id < len(self.class_names) else str(category_id)

    def _detections(self, outputs: list[dict[str, torch.Tensor]]) -> pd.DataFrame:
        rows = []
        for i, out in enumerate(outputs):
            boxes = out["boxes"].double().cpu().numpy()
            for (x1, y1, x2, y2), label, score in zip(boxes, out["labels"].tolist(), out["scores"].tolist()):
                rows.append((i, int(label), self._name(int(label)), float(score), x1, y1, x2, y2))
        return pd.DataFrame(rows, columns=_COLUMNS).astype(_DTYPES | _BOX_DTYPES)

    def _classifications(self, probs: torch.Tensor) -> pd.DataFrame:
        score, label = probs.max(dim=1)
        labels = label.tolist()
        return pd.DataFrame(
            {
                "image_index": np.arange(len(labels), dtype=np.int64),
                "category_id": np.asarray(labels, dtype=np.int32),
                "category": [self._name(c) for c in labels],
                "score": score.double().cpu().numpy(),
            }
        )


_COLUMNS = ["image_index", "category_id", "category", "score", "x1", "y1", "x2", "y2"]
_DTYPES = {"image_index": "int64", "category_id": "int32", "category": "object", "score": "float64"}
_BOX_DTYPES = {k: "float64" for k in ("x1", "y1", "x2", "y2")}

set_model(CheckpointModel())
