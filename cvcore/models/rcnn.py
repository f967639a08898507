"""R-CNN (Girshick et al. 2014), the first two-stage detector of the notes.

(a) region proposals (selective search, or sliding windows: cvcore.models.proposals);
(b) each proposal warped to a fixed square and passed through a CNN for a feature vector;
(c) one linear SVM per class scores the features; (d) class-specific bounding-box regression
on the same features refines the box; then class-wise NMS.

How it trains with the one engine (``cvcore.engine.train.fit``): the CNN is a registry classifier
with its last linear layer removed (a classifier trained earlier can be passed as ``pretrained``,
the paper's supervised pre-training). Two modes:

- ``finetune=True`` (the registered builder's default): the paper's domain-specific fine-tuning
  of the CNN on warped proposals, run *alongside* the SVMs instead of before them. Each step
  samples ``finetune_regions`` regions per image (ground-truth boxes and proposals; a quarter
  foreground, IoU >= ``finetune_fg_iou`` with an object, the rest background, torchvision's
  ``BalancedPositiveNegativeSampler`` as in the paper's 32 + 96 windows), warps them, and trains
  the CNN with a (K+1)-way softmax head (``loss_finetune``, cross-entropy). The SVMs and box
  regressors learn on the same regions' features *detached* from the CNN (the CNN learns only
  from the softmax, as in the paper); as the learning rate decays the features settle and the
  SVMs settle on them. The softmax head is used only in training: detection scores are the SVMs'.
- ``finetune=False``: the CNN is a *frozen* feature extractor. In train mode
  ``model(images, targets)`` looks each image up in a feature cache (content digest of pixels +
  ground truth; on disk under ``cache_dir`` keyed by the backbone's weights digest and the
  proposal and warp settings), so the CNN runs once per training image, on the first epoch;
  every later step is linear algebra.

Train mode returns (plus ``loss_finetune`` when fine-tuning)

- ``loss_svm``: the hinge loss of the K one-vs-rest linear SVMs with hard-negative mining (per
  class: every positive and the highest-scoring negatives of the batch, under the current
  weights) plus the SVMs' L2 regularisation ``0.5 * l2 * ||W||²`` — the SVM objective, which
  SGD/AdamW then minimises;
- ``loss_box_reg``: squared error of the class-specific (dx, dy, dw, dh) regression of
  proposals that overlap a ground-truth box by IoU >= ``reg_min_iou`` (0.6 in the paper), plus
  the same L2 term (the paper's ridge regression).

Eval mode returns ``list[dict(boxes, labels, scores)]``; ``scores`` are ``sigmoid(SVM margin)``,
a monotone map into (0, 1) (ranking, hence AP, is the SVM's; it is not a calibrated probability).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes, roi_align

from cvcore.config import PartialRunConfig
from cvcore.models._registry import register_model
from cvcore.models.build import build_model
from cvcore.models.capabilities import CachesProposals, ProposesRegions, Transferable
from cvcore.models.proposals import ProposalSettings, TensorCache, image_key

log = logging.getLogger(__name__)

# The paper's box regression works on raw (dx, dy, dw, dh) offsets: no per-coordinate weights.
RCNN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def warp_regions(image: torch.Tensor, boxes: torch.Tensor, *, size: int, context_pad: int = 0) -> torch.Tensor:
    """Crop each box out of ``image`` and warp it (anisotropically) to ``size`` x ``size``.

    The paper's "warp" with context padding: each box is first enlarged so that, after warping,
    ``context_pad`` pixels of surrounding image lie on every side of the original box. The crop is
    bilinear sampling by ``torchvision.ops.roi_align`` (``aligned=True``); outside the image it
    reads zeros.

    Args:
        image: ``float[3, H, W]``.
        boxes: ``float[P, 4]`` xyxy pixels of ``image``.
    Returns:
        ``float[P, 3, size, size]``.
    """
    if not 0 <= 2 * context_pad < size:
        raise ValueError(f"context_pad must be in [0, size / 2), got {context_pad} for size {size}")
    boxes = boxes.to(image.dtype)
    if context_pad:
        scale = size / (size - 2 * context_pad)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
        boxes = torch.cat([centre - half, centre + half], dim=1)
    return roi_align(image[None], [boxes], output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def svm_labels(
    boxes: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    *,
    num_classes: int,
    pos_iou: float,
    neg_iou: float,
) -> torch.Tensor:
    """One-vs-rest SVM labels of each box for each class: +1 positive, -1 negative, 0 ignored.

    For class ``c``, a box is positive when its best IoU with a ground-truth box of class ``c``
    is >= ``pos_iou`` (1.0: only the ground-truth boxes themselves, as in the paper), negative
    when it is < ``neg_iou`` (0.3 in the paper), ignored in between.

    Args:
        boxes: ``float[N, 4]``; gt_boxes: ``float[G, 4]``; gt_labels: ``int64[G]`` in 0..K-1.
    Returns:
        ``int8[N, K]``.
    """
    n = len(boxes)
    if len(gt_boxes) == 0:
        best = boxes.new_zeros((n, num_classes))
    else:
        onehot = F.one_hot(gt_labels.long(), num_classes).to(boxes.dtype)  # [G, K]
        best = (box_iou(boxes, gt_boxes.to(boxes.dtype))[:, :, None] * onehot[None]).amax(dim=1)  # [N, K]
    labels = torch.zeros((n, num_classes), dtype=torch.int8, device=boxes.device)
    labels[best >= pos_iou - 1e-6] = 1  # a ground-truth box has IoU 1 with itself, up to rounding
    labels[best < neg_iou] = -1
    return labels


def hard_negative_mask(
    scores: torch.Tensor, labels: torch.Tensor, *, negatives_per_positive: int, min_negatives: int
) -> torch.Tensor:
    """The hard negatives of each class: its highest-scoring negatives.

    Class ``c`` keeps ``min(#negatives, max(min_negatives, negatives_per_positive * #positives))``
    negatives, those with the highest scores under the current SVM (the ones that violate the
    margin most, or come closest to it).

    Args:
        scores: ``float[N, K]`` SVM margins; labels: ``int8[N, K]`` from :func:`svm_labels`.
    Returns:
        ``bool[N, K]``, true at the selected negatives.
    """
    negative = labels == -1
    quota = (labels == 1).sum(dim=0) * negatives_per_positive
    quota = quota.clamp(min=min_negatives)  # [K]
    masked = scores.detach().masked_fill(~negative, float("-inf"))
    order = masked.argsort(dim=0, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(0, order, torch.arange(len(scores), device=scores.device)[:, None].expand_as(order))
    return negative & (rank < quota[None, :])


def svm_hinge_loss(
    scores: torch.Tensor, labels: torch.Tensor, *, negatives_per_positive: int = 3, min_negatives: int = 16
) -> torch.Tensor:
    """Hinge loss of K one-vs-rest linear SVMs over their positives and hard negatives.

    Per class: ``(sum over positives of max(0, 1 - s) + sum over hard negatives of
    max(0, 1 + s)) / (#positives + #hard negatives)``; the mean over the classes that have any
    example. Regularisation is the caller's (it owns the weights).

    Args:
        scores: ``float[N, K]`` margins ``w_c . x + b_c``; labels: ``int8[N, K]`` in {1, -1, 0}.
    Returns:
        A scalar tensor (0 when no class has an example).
    """
    hard = hard_negative_mask(
        scores, labels, negatives_per_positive=negatives_per_positive, min_negatives=min_negatives
    )
    positive = labels == 1
    hinge = torch.where(positive, F.relu(1 - scores), F.relu(1 + scores))
    chosen = (positive | hard).to(scores.dtype)
    count = chosen.sum(dim=0)
    per_class = (hinge * chosen).sum(dim=0) / count.clamp(min=1)
    present = count > 0
    if not present.any():
        return scores.sum() * 0.0
    return per_class[present].mean()


@dataclass(frozen=True)
class RegressionTargets:
    """Box-regression training pairs: proposal ``index`` (into the proposals), its matched
    ground-truth ``labels`` (int64[M]) and the ``targets`` float[M, 4] (dx, dy, dw, dh)."""

    index: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor


def regression_targets(
    proposals: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    *,
    min_iou: float,
    box_coder: BoxCoder,
) -> RegressionTargets:
    """Pair each proposal with its best-overlapping ground-truth box when IoU >= ``min_iou``.

    Targets are the paper's parametrisation, computed by torchvision's ``BoxCoder`` (the same
    code Faster R-CNN uses, so R-CNN and its successors regress boxes identically):
    ``dx = (gx - px) / pw``, ``dy = (gy - py) / ph``, ``dw = log(gw / pw)``, ``dh = log(gh / ph)``
    (centres and sizes; times the coder's weights).
    """
    empty = proposals.new_zeros((0,), dtype=torch.int64)
    if len(gt_boxes) == 0 or len(proposals) == 0:
        return RegressionTargets(empty, empty, proposals.new_zeros((0, 4)))
    best, match = box_iou(proposals, gt_boxes.to(proposals.dtype)).max(dim=1)
    index = torch.nonzero(best >= min_iou).flatten()
    targets = box_coder.encode_single(gt_boxes[match[index]].to(proposals.dtype), proposals[index])
    return RegressionTargets(index=index, labels=gt_labels[match[index]].long(), targets=targets)


def decode_class_boxes(deltas: torch.Tensor, proposals: torch.Tensor, *, box_coder: BoxCoder) -> torch.Tensor:
    """Apply class-specific offsets: ``deltas float[P, K*4]`` on ``proposals float[P, 4]`` →
    ``float[P, K, 4]`` xyxy boxes (the inverse of :func:`regression_targets`' encoding)."""
    p = len(proposals)
    return box_coder.decode_single(deltas.reshape(p, -1), proposals).reshape(p, -1, 4)


def classifier_features(classifier: nn.Module) -> tuple[nn.Module, int]:
    """A classifier with its last linear layer replaced by the identity, and the feature size.

    For VGG this is fc7 (4096-d, the paper's features), for ResNet the pooled 512/2048-d vector.
    The classifier keeps normalising its [0, 1] input itself.
    """
    last_name, last = None, None
    for name, module in classifier.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = name, module
    if last is None:
        raise ValueError(f"{type(classifier).__name__} has no linear layer to remove; is it a classifier?")
    parent = classifier.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else classifier
    setattr(parent, last_name.rpartition(".")[2], nn.Identity())
    return classifier, last.in_features


def weights_digest(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class RCNN(nn.Module, Transferable, ProposesRegions, CachesProposals):
    """R-CNN over a frozen CNN feature extractor; see the module docstring for how it trains.

    Args:
        num_classes: K object classes (labels 0..K-1; background is implicit).
        features: frozen ``[B, 3, S, S]`` float [0, 1] → ``[B, D]`` (see :func:`classifier_features`).
        feature_dim: D.
        proposals: how regions are proposed.
        warp_size / context_pad: the warp of each region (pixels).
        cache_dir: where proposals and training features are cached on disk (None: memory only).
        svm_pos_iou / svm_neg_iou: SVM positives and negatives (see :func:`svm_labels`).
        reg_min_iou: proposals that train the box regressors.
        negatives_per_positive / min_negatives: the hard-negative quota per class and batch.
        l2: L2 regularisation of the SVMs and regressors.
        feature_norm: features are scaled to this L2 norm (the paper scales to a mean norm of 20),
            so one learning rate suits every backbone.
        finetune: train the CNN on warped proposals (see the module docstring) instead of
            keeping it frozen.
        finetune_regions / finetune_fg_iou / finetune_fg_fraction: regions sampled per image
            and step for fine-tuning, the IoU with an object from which a region is that
            object's class (background below), and the foreground fraction of the sample.
        score_thresh / nms_thresh / detections_per_img: inference.
        chunk_size: regions per CNN batch.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        features: nn.Module,
        feature_dim: int,
        proposals: ProposalSettings = ProposalSettings(),
        warp_size: int = 64,
        context_pad: int = 4,
        cache_dir: str | Path | None = None,
        svm_pos_iou: float = 0.7,
        svm_neg_iou: float = 0.3,
        reg_min_iou: float = 0.6,
        negatives_per_positive: int = 3,
        min_negatives: int = 16,
        l2: float = 1e-4,
        feature_norm: float = 20.0,
        finetune: bool = False,
        finetune_regions: int = 32,
        finetune_fg_iou: float = 0.5,
        finetune_fg_fraction: float = 0.25,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.3,
        detections_per_img: int = 100,
        chunk_size: int = 256,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.finetune = finetune
        self.features = features.eval().requires_grad_(finetune)
        self.svm = nn.Linear(feature_dim, num_classes)
        self.bbox_reg = nn.Linear(feature_dim, num_classes * 4)
        nn.init.normal_(self.svm.weight, std=0.01)
        nn.init.zeros_(self.svm.bias)
        nn.init.zeros_(self.bbox_reg.weight)  # start from the proposals themselves
        nn.init.zeros_(self.bbox_reg.bias)
        self.proposal_settings = proposals
        self.warp_size = warp_size
        self.context_pad = context_pad
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.svm_pos_iou, self.svm_neg_iou, self.reg_min_iou = svm_pos_iou, svm_neg_iou, reg_min_iou
        self.negatives_per_positive, self.min_negatives = negatives_per_positive, min_negatives
        self.l2, self.feature_norm = l2, feature_norm
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.chunk_size = chunk_size
        if finetune:
            # The fine-tuning softmax over K objects + background (index 0); training only.
            self.finetune_cls = nn.Linear(feature_dim, num_classes + 1)
            self.finetune_fg_iou = finetune_fg_iou
            self.finetune_sampler = BalancedPositiveNegativeSampler(finetune_regions, finetune_fg_fraction)
        self.box_coder = BoxCoder(RCNN_BOX_WEIGHTS)
        self.proposal_cache = TensorCache(self.cache_dir / "proposals" / proposals.key() if self.cache_dir else None)
        self._feature_cache: TensorCache | None = None
        self.proposals_seen: list[int] = []  # proposals per image of the eval-mode calls (bake-off)
        # How cvcore.models.pretrained maps a classifier's weights (``backbone.*``) onto ``features.*``.
        self.transfer_renames = (("", "features."),)
        self.torchvision_sources = (
            tuple(s.moved("features.") for s in features.torchvision_sources)
            if isinstance(features, Transferable)
            else ()
        )
        # Loading other weights changes the features, hence the cache they are filed under.
        self.register_load_state_dict_post_hook(lambda module, _: module._reset_feature_cache())

    # -- the interface ----------------------------------------------------------------------

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("R-CNN in train mode needs targets (boxes, labels) for every image")
            return self._finetune_losses(images, targets) if self.finetune else self._losses(images, targets)
        return self._detect(images)

    def train(self, mode: bool = True) -> "RCNN":
        super().train(mode)
        if not self.finetune:
            self.features.eval()  # frozen: batch-norm statistics must not move either
        return self

    # -- training ----------------------------------------------------------------------------

    def _losses(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        feats, labels, reg_feats, reg_labels, reg_targets = [], [], [], [], []
        for image, target in zip(images, targets):
            gt_boxes = torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4)
            gt_labels = torch.as_tensor(target["labels"]).long()
            entry = self.feature_cache.get_or_compute(
                image_key(image, gt_boxes), lambda: self._train_entry(image, gt_boxes)
            )
            device = self.svm.weight.device
            proposals = entry["proposals"].to(device)
            gt_boxes, gt_labels = gt_boxes.to(device), gt_labels.to(device)
            f_gt, f_prop = (
                self._normalise(entry["gt_features"].to(device)),
                self._normalise(entry["proposal_features"].to(device)),
            )
            boxes = torch.cat([gt_boxes, proposals])
            feats.append(torch.cat([f_gt, f_prop]))
            labels.append(
                svm_labels(
                    boxes,
                    gt_boxes,
                    gt_labels,
                    num_classes=self.num_classes,
                    pos_iou=self.svm_pos_iou,
                    neg_iou=self.svm_neg_iou,
                )
            )
            reg = regression_targets(proposals, gt_boxes, gt_labels, min_iou=self.reg_min_iou, box_coder=self.box_coder)
            reg_feats.append(f_prop[reg.index])
            reg_labels.append(reg.labels)
            reg_targets.append(reg.targets)
        return {
            "loss_svm": self._svm_loss(torch.cat(feats), torch.cat(labels)),
            "loss_box_reg": self._box_loss(torch.cat(reg_feats), torch.cat(reg_labels), torch.cat(reg_targets)),
        }

    def _finetune_losses(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        """One step of fine-tuning (the CNN, by softmax) with the SVMs and regressors beside it."""
        crops, classes, svm_targets, reg_index, reg_labels, reg_targets = [], [], [], [], [], []
        offset = 0
        for image, target in zip(images, targets):
            gt_boxes = (
                torch.as_tensor(target["boxes"])
                .as_subclass(torch.Tensor)
                .to(image.device, torch.float32)
                .reshape(-1, 4)
            )
            gt_labels = torch.as_tensor(target["labels"]).to(image.device).long()
            boxes = torch.cat([gt_boxes, self.proposals(image)])
            if len(gt_boxes):
                best, match = box_iou(boxes, gt_boxes).max(dim=1)
                cls = torch.where(best >= self.finetune_fg_iou, gt_labels[match] + 1, 0)
            else:
                cls = torch.zeros(len(boxes), dtype=torch.int64, device=image.device)
            (fg,), (bg,) = self.finetune_sampler([torch.where(cls > 0, 1, 0)])
            keep = (fg | bg).bool()
            boxes, cls = boxes[keep], cls[keep]
            crops.append(warp_regions(image, boxes, size=self.warp_size, context_pad=self.context_pad))
            classes.append(cls)
            svm_targets.append(
                svm_labels(
                    boxes,
                    gt_boxes,
                    gt_labels,
                    num_classes=self.num_classes,
                    pos_iou=self.svm_pos_iou,
                    neg_iou=self.svm_neg_iou,
                )
            )
            reg = regression_targets(boxes, gt_boxes, gt_labels, min_iou=self.reg_min_iou, box_coder=self.box_coder)
            reg_index.append(reg.index + offset)
            reg_labels.append(reg.labels)
            reg_targets.append(reg.targets)
            offset += len(boxes)
        raw = self.features(torch.cat(crops)).flatten(1)  # [N, D], gradients reach the CNN
        loss_finetune = F.cross_entropy(self.finetune_cls(raw), torch.cat(classes))
        f = self._normalise(raw.detach())
        return {
            "loss_finetune": loss_finetune,
            "loss_svm": self._svm_loss(f, torch.cat(svm_targets)),
            "loss_box_reg": self._box_loss(f[torch.cat(reg_index)], torch.cat(reg_labels), torch.cat(reg_targets)),
        }

    def _svm_loss(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Hinge loss with hard negatives of the K SVMs on normalised ``feats [N, D]`` plus their L2."""
        scores = self.svm(feats)
        loss = svm_hinge_loss(
            scores, labels, negatives_per_positive=self.negatives_per_positive, min_negatives=self.min_negatives
        )
        return loss + 0.5 * self.l2 * self.svm.weight.pow(2).sum()

    def _box_loss(self, feats: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        reg = 0.5 * self.l2 * self.bbox_reg.weight.pow(2).sum()
        if len(feats) == 0:
            return reg
        pred = self.bbox_reg(feats).reshape(len(feats), self.num_classes, 4)[torch.arange(len(feats)), labels]
        return 0.5 * (pred - targets).pow(2).sum(dim=1).mean() + reg

    def _train_entry(self, image: torch.Tensor, gt_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        proposals = self.proposals(image)
        # float16 halves the cache; the SVMs' margins do not notice the rounding.
        return {
            "proposals": proposals,
            "proposal_features": self._extract(image, proposals).half(),
            "gt_features": self._extract(image, gt_boxes.to(image.device)).half(),
        }

    # -- inference -------------------------------------------------------------------------

    def _detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        proposals = [self.proposals(image) for image in images]
        self.proposals_seen.extend(len(p) for p in proposals)
        # One CNN pass over the regions of the whole batch: many small per-image batches cost
        # several times more on CPU (per-layer overhead).
        feats = self._extract_many(images, proposals)
        return [self._detections(image, p, f) for image, p, f in zip(images, proposals, feats)]

    def _detections(self, image: torch.Tensor, proposals: torch.Tensor, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """SVM scores, class-specific boxes and class-wise NMS of one image's ``proposals [P, 4]``
        and their CNN features ``feats [P, D]``."""
        h, w = image.shape[-2:]
        k = self.num_classes
        if len(proposals) == 0:
            return _empty_detections(image.device)
        f = self._normalise(feats)
        scores = torch.sigmoid(self.svm(f))  # [P, K]
        boxes = clip_boxes_to_image(decode_class_boxes(self.bbox_reg(f), proposals, box_coder=self.box_coder), (h, w))
        labels = torch.arange(k, device=image.device).expand(len(proposals), k)
        boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
        keep = torch.nonzero(scores > self.score_thresh).flatten()
        keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}

    # -- shared pieces ---------------------------------------------------------------------

    def proposals(self, image: torch.Tensor) -> torch.Tensor:
        """The (cached) proposals of one input image: ``float32[P, 4]`` xyxy pixels, on its device."""
        entry = self.proposal_cache.get_or_compute(
            image_key(image), lambda: {"boxes": self.proposal_settings.propose(image)}
        )
        return entry["boxes"].to(image.device)

    def _extract(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """CNN features of the warped regions of one image: ``float[P, D]``."""
        return self._extract_many([image], [boxes])[0]

    @torch.no_grad()
    def _extract_many(self, images: list[torch.Tensor], boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """CNN features of the warped regions of several images, ``chunk_size`` regions per CNN
        batch whatever image they come from: per image ``float[P_i, D]``."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return [im.new_zeros((0, self.svm.in_features)) for im in images]
        regions = [(im, b) for im, b in zip(images, boxes) for b in b.split(self.chunk_size)]
        out, pending, size = [], [], 0
        for i, (image, chunk) in enumerate(regions):
            pending.append(warp_regions(image, chunk, size=self.warp_size, context_pad=self.context_pad))
            size += len(chunk)
            if size >= self.chunk_size or i == len(regions) - 1:
                crops = torch.cat(pending)
                out.extend(self.features(c).flatten(1).float() for c in crops.split(self.chunk_size))
                pending, size = [], 0
        return list(torch.cat(out).split(counts))

    def _normalise(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(feats.float(), dim=1) * self.feature_norm

    @property
    def feature_cache(self) -> TensorCache:
        """Training features, filed under the backbone's weights and the proposal/warp settings."""
        if self._feature_cache is None:
            settings = {"proposals": self.proposal_settings.key(), "warp": self.warp_size, "pad": self.context_pad}
            key = hashlib.sha256(
                (weights_digest(self.features) + json.dumps(settings, sort_keys=True)).encode()
            ).hexdigest()[:16]
            self._feature_cache = TensorCache(self.cache_dir / "rcnn-features" / key if self.cache_dir else None)
        return self._feature_cache

    def _reset_feature_cache(self) -> None:
        self._feature_cache = None


def _empty_detections(device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.zeros((0, 4), device=device),
        "labels": torch.zeros((0,), dtype=torch.int64, device=device),
        "scores": torch.zeros((0,), device=device),
    }


# -- the registered builder --------------------------------------------------------------------

# Run settings for 128-px data on 2 CPU cores, with the builder's defaults (the CNN fine-tuned on
# 16 warped 32-px regions per image). On digits-det-dev (benchmarks/RESULTS.md, "Two-stage models
# on real data") the frozen untrained CNN gave val mAP@0.5 0.34 after 6 epochs at lr 1e-2 (a
# linear probe names 49 % of the digits in perfect boxes from its features); fine-tuned at lr 1e-3
# it reaches 0.63 after 2 epochs and 0.934 (mAP 0.622) after these 5. No augmentation: the SVMs
# and regressors learn best on regions they see again.
RCNN_DEFAULTS = PartialRunConfig(
    data={"img_size": 128},
    augment={"preset": "none"},
    train={
        "epochs": 5, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "cosine",
        "warmup_epochs": 0.0,
    },
)  # fmt: skip


@register_model(
    "rcnn", task="detection", defaults=RCNN_DEFAULTS, capabilities=(Transferable, ProposesRegions, CachesProposals)
)
def build_rcnn(
    num_classes: int,
    *,
    backbone: str = "resnet18",
    small_input: bool = False,
    warp_size: int = 32,
    context_pad: int = 2,
    proposal_method: str = "selective_search",
    strategy: str = "fast",
    max_proposals: int = 2000,
    window_sizes: tuple[float, ...] = (16.0, 32.0, 64.0),
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    stride: int = 8,
    cache_dir: str | None = None,
    svm_pos_iou: float = 0.7,
    svm_neg_iou: float = 0.3,
    reg_min_iou: float = 0.6,
    negatives_per_positive: int = 3,
    min_negatives: int = 16,
    l2: float = 1e-4,
    finetune: bool = True,
    finetune_regions: int = 16,
    finetune_fg_iou: float = 0.5,
    finetune_fg_fraction: float = 0.25,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.3,
    detections_per_img: int = 100,
) -> RCNN:
    """R-CNN with a registry classifier (``backbone``, e.g. resnet18, vgg16) as its frozen CNN.

    ``pretrained`` (given to ``build_model``) loads into that CNN: a classifier checkpoint of the
    same architecture (e.g. ``cvflow train --model resnet18`` on related data; build it with the
    same ``small_input``), ``"torchvision"`` (ImageNet weights from the local hub cache), or an
    R-CNN checkpoint. ``small_input`` False keeps ResNet's stride-4 stem: a 32-px warp costs 16x
    less than with the stride-1 small-input stem, and the 8 x 8 map after the stem still holds a
    digit or a shape. ``finetune`` (default True) trains the CNN on warped proposals beside the
    SVMs (see the module docstring); False keeps it frozen, e.g. over a pretrained classifier.
    ``proposal_method`` is "selective_search" (``strategy`` "fast" | "quality") or
    "sliding_windows" (``window_sizes``, ``aspect_ratios``, ``stride``).
    """
    classifier = build_model(backbone, num_classes=1, small_input=small_input, img_size=warp_size)
    features, dim = classifier_features(classifier)
    settings = ProposalSettings(
        method=proposal_method, strategy=strategy, max_proposals=max_proposals,
        window_sizes=tuple(window_sizes), aspect_ratios=tuple(aspect_ratios), stride=stride,
    )  # fmt: skip
    model = RCNN(
        num_classes, features=features, feature_dim=dim, proposals=settings, warp_size=warp_size, context_pad=context_pad,
        cache_dir=cache_dir, svm_pos_iou=svm_pos_iou, svm_neg_iou=svm_neg_iou, reg_min_iou=reg_min_iou,
        negatives_per_positive=negatives_per_positive, min_negatives=min_negatives, l2=l2, finetune=finetune,
        finetune_regions=finetune_regions, finetune_fg_iou=finetune_fg_iou, finetune_fg_fraction=finetune_fg_fraction,
        score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
    )  # fmt: skip
    return model
