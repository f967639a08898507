"""BatchMixer: CutMix weights equal the pasted area, MixUp weights the blend, odds and seeding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cvcore.augment.mixing import BatchMixer
from cvcore.config import AugmentConfig

K = 6


def constant_batch(b: int, h: int = 20, w: int = 28):
    """Image i is filled with (i + 1) / 10 and labelled i, so every pixel names its source."""
    values = (torch.arange(b, dtype=torch.float32) + 1) / 10
    return values.view(b, 1, 1, 1).expand(b, 3, h, w).clone(), torch.arange(b, dtype=torch.int64), values


@settings(max_examples=25, derandomize=True, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(2, K), alpha=st.sampled_from([0.5, 1.0, 2.0]))
def test_cutmix_label_weights_equal_the_pasted_area_ratio(seed, b, alpha):
    images, labels, values = constant_batch(b)
    mixed = BatchMixer(AugmentConfig(cutmix_p=1.0, cutmix_alpha=alpha, seed=seed), K).mix(images, labels)
    assert mixed.method == "cutmix"
    assert mixed.targets.shape == (b, K) and mixed.targets.dtype == torch.float32
    assert torch.allclose(mixed.targets.sum(1), torch.ones(b))
    for i in range(b):
        partner = (i - 1) % b  # v2.CutMix pastes from the previous image (roll by 1)
        pasted = (mixed.images[i, 0] == values[partner]).float().mean()
        kept = (mixed.images[i, 0] == values[i]).float().mean()
        assert pasted + kept == pytest.approx(1.0)
        assert float(mixed.targets[i, labels[partner]]) == pytest.approx(float(pasted), abs=1e-6)
        assert float(mixed.targets[i, labels[i]]) == pytest.approx(float(kept), abs=1e-6)
    # The pasted patch is one rectangle, the same for all images of the batch.
    patch = mixed.images[0, 0] == values[b - 1]
    ys, xs = torch.nonzero(patch, as_tuple=True)
    if len(ys):
        assert int(patch.sum()) == (int(ys.max()) - int(ys.min()) + 1) * (int(xs.max()) - int(xs.min()) + 1)


@settings(max_examples=15, derandomize=True, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(2, K))
def test_mixup_label_weights_equal_the_blend(seed, b):
    images, labels, values = constant_batch(b)
    mixed = BatchMixer(AugmentConfig(mixup_p=1.0, seed=seed), K).mix(images, labels)
    assert mixed.method == "mixup"
    for i in range(b):
        partner = (i - 1) % b
        lam = float(mixed.targets[i, labels[i]])
        expected = lam * values[i] + (1 - lam) * values[partner]
        assert torch.allclose(mixed.images[i], torch.full_like(mixed.images[i], float(expected)), atol=1e-5)
        assert float(mixed.targets[i, labels[partner]]) == pytest.approx(1 - lam, abs=1e-6)


def test_no_mixing_gives_one_hot_targets_and_untouched_images():
    images, labels, _ = constant_batch(4)
    mixer = BatchMixer(AugmentConfig(), K)
    assert not mixer.active
    out, targets = mixer(images, labels)
    assert torch.equal(out, images)
    assert torch.equal(targets, torch.nn.functional.one_hot(labels, K).float())


def test_probabilities_share_one_draw():
    mixer = BatchMixer(AugmentConfig(cutmix_p=0.3, mixup_p=0.5, seed=1), K)
    images, labels, _ = constant_batch(3, 4, 4)
    methods = [mixer.mix(images, labels).method for _ in range(400)]
    share = {m: methods.count(m) / len(methods) for m in ("cutmix", "mixup", "none")}
    assert share["cutmix"] == pytest.approx(0.3, abs=0.08)
    assert share["mixup"] == pytest.approx(0.5, abs=0.08)
    assert share["none"] == pytest.approx(0.2, abs=0.08)


def test_same_seed_same_batches_resume_from_state_and_global_rng_untouched():
    images, labels, _ = constant_batch(5)
    config = AugmentConfig(cutmix_p=0.5, mixup_p=0.5, seed=7)
    a, b = BatchMixer(config, K), BatchMixer(config, K)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = [a(images, labels) for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), state)  # the training RNG did not move
    second = [b(images, labels) for _ in range(3)]
    for (x1, t1), (x2, t2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(t1, t2)
    saved = a.state_dict()
    nxt = a(images, labels)
    b.load_state_dict(saved)
    resumed = b(images, labels)
    assert torch.equal(nxt[0], resumed[0]) and torch.equal(nxt[1], resumed[1])
    assert not all(torch.equal(first[0][1], f[1]) for f in first[1:])  # batches differ from call to call


def test_bad_inputs_are_rejected():
    mixer = BatchMixer(AugmentConfig(cutmix_p=1.0), K)
    with pytest.raises(ValueError, match="float images"):
        mixer(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be in 0..5"):
        mixer(torch.zeros(2, 3, 4, 4), torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="expected images"):
        mixer(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1, 2]))
