"""What a detector considers per image, measured while it runs: candidate boxes and proposals.

Pieces a comparison of detectors (the bake-off, ``tasks/bakeoff.py``) reads around inference:
how many boxes each model scores per image before NMS (:class:`CandidateCounter`), what its
external proposals can find at all (:func:`external_proposal_recall`), and proposal caches
emptied so timed inference computes proposals as a new image would
(:func:`empty_proposal_caches`).
"""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from cvcore.models.capabilities import CachesProposals, GridDetector, ProposesRegions
from cvcore.models.proposals import ProposalRecall, TensorCache, dataset_proposal_recall


class CandidateCounter:
    """Counts the boxes a detector scores per image before NMS while it runs in eval mode.

    Two-stage models of cvcore record their proposals (``CachesProposals.proposals_seen``, in
    any submodule); torchvision's RPN is hooked (its output proposals per image); a
    ``GridDetector`` has ``grid`` x ``grid`` cells of ``boxes_per_cell`` boxes (S*S*B). Other models: NaN. Call :meth:`close` to remove the hooks.
    """

    def __init__(self, model: nn.Module):
        from torchvision.models.detection.rpn import RegionProposalNetwork

        self._recorders = [m for m in model.modules() if isinstance(m, CachesProposals)]
        for m in self._recorders:
            m.proposals_seen.clear()
        self._rpn_counts: list[int] = []
        self._hooks = [
            m.register_forward_hook(lambda _m, _i, output: self._rpn_counts.extend(len(b) for b in output[0]))
            for m in model.modules()
            if isinstance(m, RegionProposalNetwork)
        ]
        self._fixed = float(model.grid**2 * model.boxes_per_cell) if isinstance(model, GridDetector) else None

    def per_image(self) -> float:
        """Mean candidate boxes per image seen since construction (NaN when unknown)."""
        counts = [n for m in self._recorders for n in m.proposals_seen] + self._rpn_counts
        if counts:
            return float(np.mean(counts))
        return self._fixed if self._fixed is not None else math.nan

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def empty_proposal_caches(model: nn.Module) -> None:
    """Give every proposal cache of ``model`` a fresh, memory-only store, so timed inference
    computes proposals as a new image would (the training run may have cached them on disk)."""
    for module in model.modules():
        if isinstance(module, CachesProposals):
            module.proposal_cache = TensorCache(None)


def external_proposal_recall(model: nn.Module, dataset) -> ProposalRecall | None:
    """Recall at IoU 0.5 / 0.7 of a model's own proposals (``ProposesRegions.proposals(image)``,
    R-CNN and Fast R-CNN) on ``dataset``'s images, in the model's input pixels; None for other models."""
    return dataset_proposal_recall(model.proposals, dataset) if isinstance(model, ProposesRegions) else None
