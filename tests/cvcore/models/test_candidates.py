"""Candidate boxes per image (cvcore.models.candidates): recorded proposals, torchvision's RPN, a fixed grid."""

from __future__ import annotations

import math

import torch
from torch import nn

from cvcore.models.candidates import CandidateCounter
from cvcore.models.proposals import TensorCache


def test_candidate_counter():
    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.proposals_seen = [99]
            self.proposal_cache = TensorCache(None)  # with proposals_seen: CachesProposals (cvcore.models.capabilities)

    rec = Recording()
    counter = CandidateCounter(rec)
    assert rec.proposals_seen == [] and math.isnan(counter.per_image())
    rec.proposals_seen.extend([10, 20])
    assert counter.per_image() == 15.0

    grid = nn.Module()
    grid.grid, grid.boxes_per_cell = 7, 2
    assert CandidateCounter(grid).per_image() == 98.0


def test_candidate_counter_hooks_torchvision_rpn():
    from cvcore.models import build_model

    torch.manual_seed(0)
    model = build_model("faster_rcnn", num_classes=2, img_size=64).eval()
    counter = CandidateCounter(model)
    with torch.no_grad():
        model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)])
    counter.close()
    n = counter.per_image()
    assert 0 < n <= 1000 and n == int(n)
