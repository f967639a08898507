"""Per-sample seeding: an augmented sample depends only on (seed, epoch, index).

transforms.v2 draws from torch's global CPU generator. Left alone, a DataLoader seeds that
generator per worker from its own ``generator`` (base seed + worker id), which is reproducible
for a fixed worker count but changes when the count or the sampler order changes. Wrapping a
dataset in :class:`SeededDataset` (or using :class:`cvcore.augment.mosaic.MosaicDataset`, which
does the same) reseeds the generator for each sample from ``(seed, epoch, index)``, so the
samples are the same with 0, 2 or 8 workers and in any order. The caller's generator state is
restored afterwards (``torch.random.fork_rng``), so training randomness (dropout, shuffling)
is not disturbed when the dataset runs in the main process. Samples are also made on one
intra-op thread (:func:`one_thread`), as they are in DataLoader workers.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A numpy generator for one sample, a pure function of ``(seed, epoch, index)``."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]))


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded to ``seed``, then restore its state.

    Only the CPU generator is touched (``torch.default_generator``, not ``torch.manual_seed``,
    which would also reseed every CUDA generator that fork_rng(devices=[]) does not restore).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the thread count.

    Per-sample transforms on small images gain nothing from intra-op threads and lose a lot to
    their synchronisation when cores are busy (measured 15x slower with 2 threads on a loaded
    2-core machine, benchmarks/RESULTS.md). DataLoader workers already run on one thread; this
    gives ``num_workers=0`` the same. The count is process-wide: a model running in another
    Python thread at the same moment would briefly get one thread too (slower, not wrong).
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SeededDataset(torch.utils.data.Dataset):
    """``dataset[index]`` with torch's generator seeded from ``(seed, epoch, index)``.

    Call :meth:`set_epoch` before each epoch (new augmentations each epoch, same ones on rerun).
    Attribute changes reach DataLoader workers when they start, i.e. each epoch unless
    ``persistent_workers=True``.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, *, seed: int):
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        rng = sample_rng(self.seed, self.epoch, index)
        with torch_seeded(int(rng.integers(2**63))), one_thread():
            return self.dataset[index]
