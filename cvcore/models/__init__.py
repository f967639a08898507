"""Models: a registry of classifiers and detectors sharing one interface (see _registry.py).

``build_model(name, num_classes=K, pretrained=..., **options)`` builds any registered model;
``cvcore.models.finetune`` chooses what trains. What a model has beyond the shared interface
(fine-tuning stages, weight transfer, settable decoding, proposals, ...) is a protocol of
``cvcore.models.capabilities``, claimed by its registry entry (``model_spec(name).capabilities``).
Importing this package registers the built-in models (each model module registers itself with
``@register_model`` when imported).
"""

from cvcore.models._registry import ModelSpec, list_models, model_spec, register_model
from cvcore.models.build import build_model
from cvcore.models.finetune import apply_freeze, param_groups

# Model modules, imported for their registrations.
from cvcore.models import classifiers  # noqa: E402,F401  vgg*, resnet*
from cvcore.models import yolov1  # noqa: E402,F401  yolov1
from cvcore.models import faster_rcnn  # noqa: E402,F401  faster_rcnn
from cvcore.models import rcnn  # noqa: E402,F401  rcnn
from cvcore.models import fast_rcnn  # noqa: E402,F401  fast_rcnn
from cvcore.models import fcos  # noqa: E402,F401  fcos

__all__ = ["ModelSpec", "apply_freeze", "build_model", "list_models", "model_spec", "param_groups", "register_model"]
