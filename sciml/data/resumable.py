"""A shuffling training loader that a checkpoint resumes mid-epoch, to the uninterrupted run's batches.

Lightning restores the weights, the optimiser and the loop counters of an interrupted run, but a
plain ``DataLoader(shuffle=True)`` starts a fresh shuffle on resumption, and drawing it moves the
global random stream that the model samples from: the batches after a resumption differ from an
uninterrupted run's. :class:`ResumableLoader` keeps what is needed to continue instead, in the
checkpoint (Lightning saves and restores a loader with ``state_dict``/``load_state_dict``):

- the epoch's order: drawn exactly as torch's ``RandomSampler`` draws it (one seed from the
  global torch stream, then ``randperm``), so an uninterrupted run loading in-process is
  unchanged by this class (with loader workers, the global stream is drawn as in-process, so a
  run does not depend on their number), and the seed is kept so a resumed run rebuilds the same
  order and skips the batches trained;
- each item's position in the run (epoch start + position in the epoch), handed to datasets
  that draw random points per item (``keyed=True``: the sampler yields ``(index, position)``), so
  an item's draws depend on where it falls in the run, not on which process or how many loader
  workers drew it;
- the global torch stream around the loader's own draws: a resumed loader consumes from it
  exactly what the uninterrupted one consumed at that point (the random state itself travels in
  the checkpoint through :class:`sciml.callbacks.RandomState`).

What is not reproduced on resumption: the seed that torch hands loader worker processes (our
datasets draw nothing from it); anything under a distributed strategy or ``overfit_batches``,
where Lightning replaces the sampler (:func:`training_loader` then gives a plain shuffling
loader); and the rest of an epoch resumed from a checkpoint without the loader's state (written
before it had one), which starts a fresh order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError


def _draw_seed() -> int:
    """One seed from the global torch stream, as ``RandomSampler`` and a loader iterator draw theirs."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def epoch_progress(trainer: Any) -> tuple[int, float]:
    """(batches of the current epoch that ``trainer`` has trained on, batches its epochs have):
    (0, inf) outside a fit. An epoch can be shorter than the loader (``limit_train_batches``)."""
    loop = getattr(trainer, "fit_loop", None)
    if loop is None:
        return 0, float("inf")
    return int(loop.epoch_loop.batch_progress.current.ready), float(trainer.num_training_batches)


def training_loader(dataset: Dataset, batch_size: int, trainer: Any, keyed: bool = False, num_workers: int = 0) -> DataLoader:
    """A data module's shuffling training loader: :class:`ResumableLoader`, following
    ``trainer``'s progress (a callable returning the trainer: the module's attribute, set when
    it is attached). Where Lightning puts in a sampler of its own (a distributed strategy, which
    shards the data, even on one device; ``overfit_batches``), a plain shuffling ``DataLoader``:
    resumption there starts the epoch's shuffle afresh."""
    kwargs = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    if _injects_sampler(trainer()):
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, **kwargs)
    return ResumableLoader(dataset, batch_size, progress=lambda: epoch_progress(trainer()), keyed=keyed, **kwargs)


def _injects_sampler(trainer: Any) -> bool:
    """Whether Lightning will replace a training loader's sampler under ``trainer``."""
    if trainer is None or not hasattr(trainer, "strategy"):
        return False
    from lightning.pytorch.strategies import ParallelStrategy

    return isinstance(trainer.strategy, ParallelStrategy) or bool(getattr(trainer, "overfit_batches", 0))


class EpochShuffle(Sampler):
    """Every epoch a fresh permutation of ``size`` items, drawn as torch's ``RandomSampler``
    draws it (a seed from the global torch stream at the epoch's first item, then ``randperm``).
    With ``keyed`` it yields ``(index, position)``, the position counting items from the start of
    training."""

    def __init__(self, size: int, keyed: bool = False):
        self.size, self.keyed = size, keyed
        self.seed: int | None = None  # the current epoch's
        self.start = 0  # the current epoch's first position
        self._next_start = 0
        self._resume: tuple[int | None, int, int] | None = None  # (seed or None: draw it, start, items to skip)

    def __len__(self) -> int:
        return self.size

    def resume(self, seed: int | None, start: int, skip: int) -> None:
        """The next epoch continues one that started at ``start`` with ``seed`` (None: a new epoch
        there, its seed drawn as usual), after its first ``skip`` items."""
        self._resume = (seed, start, skip)

    def __iter__(self) -> Iterator[Any]:
        # a generator, as RandomSampler's: the seed is drawn at the first item, not at iter()
        if self._resume is not None:
            seed, start, skip = self._resume
            self._resume = None
        else:
            seed, start, skip = None, self._next_start, 0
        if seed is None:
            seed = _draw_seed()
        self.seed, self.start, self._next_start = seed, start, start + self.size
        generator = torch.Generator()
        generator.manual_seed(seed)
        order = torch.randperm(self.size, generator=generator).tolist()
        for position in range(skip, self.size):
            yield (order[position], start + position) if self.keyed else order[position]


class ResumableLoader(DataLoader):
    """A shuffling ``DataLoader`` over ``dataset`` whose checkpointed state resumes the epoch where
    training stopped (see the module doc). ``progress()`` gives (the batches of the current epoch
    that training has consumed, the batches an epoch has): Lightning's epoch-loop counter, which,
    unlike what the loader has yielded, does not count a batch fetched ahead, and the trainer's
    epoch length, which ``limit_train_batches`` can make shorter than the loader. Other arguments
    as ``DataLoader``'s (no ``shuffle``, ``sampler``)."""

    def __init__(self, dataset: Dataset, batch_size: int, progress: Callable[[], tuple[int, float]], keyed: bool = False,
                 **kwargs: Any):
        super().__init__(dataset, batch_size=batch_size, sampler=EpochShuffle(len(dataset), keyed), drop_last=False, **kwargs)
        self._progress = progress
        self._resuming = False  # set by load_state_dict until the next iter()
        # the epoch's order, in batches, where its iterator began, and the trainer's count then:
        # the order's position is their sum plus what the trainer has counted since (after a
        # checkpoint without loader state the trainer counts batches this order never gave)
        self._skipped, self._counted_at_iter = 0, 0

    def state_dict(self) -> dict[str, Any]:
        sampler: EpochShuffle = self.sampler
        counted, epoch = self._progress()
        # the trainer's count falls only where it starts a new epoch on this iterator (resumed at an epoch's end)
        since = counted - self._counted_at_iter if counted >= self._counted_at_iter else counted
        return {"seed": sampler.seed, "start": sampler.start, "batches": self._skipped + since,
                "epoch_done": counted >= epoch, "size": sampler.size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler: EpochShuffle = self.sampler
        if (state["size"], state["batch_size"]) != (sampler.size, self.batch_size):
            raise DataError(f"the checkpoint was trained on {state['size']} items in batches of {state['batch_size']}; this run has "
                            f"{sampler.size} in batches of {self.batch_size}, so it cannot resume that run's epoch. Train it afresh "
                            "in another folder (--out), or restore the data and batch size it was trained with.")
        if state["seed"] is None or state.get("epoch_done") or state["batches"] >= len(self):  # at an epoch's end: the next, drawn afresh
            sampler.resume(None, state["start"] + sampler.size if state["seed"] is not None else 0, 0)
        else:  # mid-epoch: the same order, the trained batches skipped
            sampler.resume(state["seed"], state["start"], state["batches"] * self.batch_size)
        self._resuming = True

    def __iter__(self):
        resuming, self._resuming = self._resuming, False
        sampler: EpochShuffle = self.sampler
        self._counted_at_iter = self._progress()[0]
        self._skipped = sampler._resume[2] // self.batch_size if resuming and sampler._resume is not None else 0
        if not resuming:
            if self.persistent_workers and self._iterator is not None:
                # torch reuses its workers and draws no new base seed: draw it as a new iterator
                # would, so that the global stream, and the run, do not depend on the worker count
                _draw_seed()
            return super().__iter__()
        # The first iterator after a resumption. An epoch's first iterator draws from the global
        # stream its base seed, then the order's seed: at an epoch's end, draw both as the
        # uninterrupted run did; mid-epoch, where it drew neither, nothing. Then the iterator is
        # made with the stream put back: it draws its base seed (and, with workers, the order's
        # first items) as it is built.
        if sampler._resume is not None and sampler._resume[0] is None:
            _draw_seed()  # the base seed
            _, start, skip = sampler._resume
            sampler.resume(_draw_seed(), start, skip)
        state = torch.get_rng_state()
        try:
            return super().__iter__()
        finally:
            torch.set_rng_state(state)
