"""Metrics: pure functions over polars frames / arrays returning frozen dataclasses (docs/ARCHITECTURE.md §4).

- :func:`evaluate_detections` — COCO (exact to pycocotools), VOC07, VOC12: summary, per class,
  PR curves, F1-optimal thresholds.
- :func:`detection_errors` — TIDE-like breakdown of why AP is lost.
- :func:`bootstrap_map`, :func:`compare_detections` — image-resampling intervals for mAP and for
  the difference between two prediction sets (champion vs challenger).
- :func:`classification_report`, :func:`top_k_accuracy` — scikit-learn-exact classification
  metrics; :func:`bootstrap_macro_f1`, :func:`compare_classifications` — their intervals.
"""

from cvcore.metrics.bootstrap import (
    BootstrapInterval,
    PairedComparison,
    bootstrap_macro_f1,
    bootstrap_map,
    compare_classifications,
    compare_detections,
)
from cvcore.metrics.classification import Averages, ClassificationReport, classification_report, top_k_accuracy
from cvcore.metrics.detection import DetectionReport, evaluate_detections
from cvcore.metrics.errors import ErrorBreakdown, detection_errors

__all__ = [
    "Averages",
    "BootstrapInterval",
    "ClassificationReport",
    "DetectionReport",
    "ErrorBreakdown",
    "PairedComparison",
    "bootstrap_macro_f1",
    "bootstrap_map",
    "classification_report",
    "compare_classifications",
    "compare_detections",
    "detection_errors",
    "evaluate_detections",
    "top_k_accuracy",
]
