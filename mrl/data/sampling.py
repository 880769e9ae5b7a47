"""Sample order that a run can reproduce exactly, on any number of processes, after any interruption.

* :class:`EpochSampler` (training): the order of epoch ``e`` is a permutation seeded by ``(seed, e)``,
  sharded over ranks like ``DistributedSampler`` (padded, so every rank takes the same number of
  steps). Each index comes with a per-sample seed, so a sample's augmentation is a function of
  ``(seed, epoch, index)`` alone: not of the worker that loads it, nor of what ran before.
  A run resumed mid-epoch skips the samples the interrupted run had already trained on.
* :class:`ResumableDataLoader`: a DataLoader whose ``state_dict`` Lightning stores in checkpoints
  (epoch and samples done), so ``trainer.fit(ckpt_path=...)`` resumes the data where it stopped.
* :class:`ShardSampler` (evaluation, embedding): rank ``r`` of ``W`` takes indices ``r, r+W, ...``
  with no padding, so summed counts cover every sample exactly once (``DistributedSampler`` pads
  with duplicates: 271 samples became 272 on 2 processes).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def distributed_rank_and_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, or ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochSampler(DistributedSampler):
    """Yields ``(index, sample_seed)`` pairs of this rank's share of epoch ``self.epoch``.

    A ``DistributedSampler`` subclass, so Lightning keeps it under DDP instead of wrapping it.
    """

    def __init__(self, num_samples: int, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.dataset_size = num_samples
        self._resume: tuple[int, int] | None = None  # (epoch, samples of this rank already trained on)

    def _epoch_indices(self, epoch: int) -> tuple[list[int], int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.dataset_size, generator=generator).tolist()
        seed_base = int(torch.randint(0, 2**62, (1,), generator=generator))
        order += order[: self.total_size - len(order)]  # pad like DistributedSampler: equal steps per rank
        return order[self.rank:self.total_size:self.num_replicas], seed_base

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Move to ``epoch``, whose next pass starts after its first ``samples_done`` samples (this rank's).
        The epoch is set here because loader workers draw indices as soon as an iterator exists, which for a
        resumed run is before Lightning calls ``set_epoch``."""
        self.set_epoch(epoch)
        self._resume = (epoch, samples_done)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, seed_base = self._epoch_indices(self.epoch)
        if self._resume is not None:
            epoch, done = self._resume
            self._resume = None
            if epoch == self.epoch:
                indices = indices[done:]
        return iter([(i, seed_base + i) for i in indices])


class SeededAugmentation(Dataset):
    """Wraps a dataset so ``dataset[(index, sample_seed)]`` draws its random transforms from
    ``sample_seed`` (torch and Python RNGs, forked: the caller's RNG state is left untouched)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        if isinstance(key, int):
            return self.dataset[key]
        index, sample_seed = key
        with seeded(sample_seed):
            return self.dataset[index]


@contextmanager
def seeded(sample_seed: int) -> Iterator[None]:
    """Draw the block's random transforms from ``sample_seed`` (torch's CPU generator and Python's ``random``),
    leaving the caller's streams as they were. Only the CPU generator: ``torch.manual_seed`` would also queue a
    seed for every accelerator backend, with a formatted stack trace each time, costing more than decoding the
    image (and, in a loader worker where CUDA is not initialised, piling up in a queue never drained)."""
    torch_state, py_state = torch.default_generator.get_state(), random.getstate()
    torch.default_generator.manual_seed(sample_seed)
    random.seed(sample_seed)
    try:
        yield
    finally:
        torch.default_generator.set_state(torch_state)
        random.setstate(py_state)


class ResumableDataLoader(DataLoader):
    """A training DataLoader over an :class:`EpochSampler` that Lightning treats as resumable.

    ``progress()`` gives ``{"epoch", "samples_done"}`` of the training loop (the loader cannot count
    them itself: Lightning and the workers prefetch ahead); loading such a state makes the sampler skip
    the samples already trained on.
    """

    def __init__(self, *args: Any, progress: Callable[[], dict[str, int]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        return self.progress()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(int(state["epoch"]), int(state["samples_done"]))


class ShardSampler(DistributedSampler):
    """Rank ``r`` of ``W`` gets indices ``r, r + W, r + 2W, ...``: every sample exactly once overall."""

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = list(range(rank, num_samples, num_replicas))
        self.num_samples = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples
