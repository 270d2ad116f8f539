r"""Datasets read from files, one batch at a time: samplers, the loader, and the base of such a split.

A split too large for memory (tens of thousands of full-resolution photos) is a list of files
read by a ``torch.utils.data.DataLoader`` with worker processes. This module holds what does not
depend on what the files are, so that segmentation pairs (:mod:`dalab.data.seg_real`) and photo
folders share it:

- :class:`Epoched`, a batch sampler that tags every index with its epoch, so that each item can
  draw its augmentation from ``np.random.default_rng([seed, epoch, index])``: a batch then does
  not depend on the worker that made it or on the number of workers. Its base is an item sampler
  cut into batches (:class:`SeededShuffle`, ``DistributedSampler``, :class:`Shard`) or a batch
  sampler (:class:`SizeGroupedBatches`).
- :class:`SizeGroupedBatches`, evaluation batches that never mix sizes.
- :class:`StreamLoader`, the ``DataLoader`` that counts passes (pass *k* is epoch *k*), turns a
  worker's DataError back into one line, cycles epochs (:meth:`StreamLoader.forever`) and saves
  and restores its position (:meth:`StreamLoader.state_dict`).
- :class:`FileSplit`, the base of a split read from files: it refuses to load itself into
  memory and builds its loaders from one abstract :meth:`FileSplit.dataset`.

**Size-grouped evaluation.** Item :math:`i` has a key :math:`k_i`, e.g. (the image size after
resizing, the label size). Items are grouped by key, each group in index order, groups in the
order of their first item; each group is cut into batches of at most :math:`B` items. The batches
are put in the order of their first item and dealt to the ranks: rank :math:`r` of :math:`W` takes
batches :math:`r, r + W, r + 2W, \dots`. So a batch never mixes sizes, every item is in exactly one
batch of one rank (no padding, no duplicate), and the order depends on the keys alone. With one
key this is batches of consecutive items. Ranks may get one batch more or fewer: reduce the
counts after the loop, not per batch.

**Position and resume.** A loader's position is ``{"epoch": e, "batch": k}``: ``k`` batches of
pass ``e`` have been handed out (counted when a batch is yielded, not when workers prefetch it).
Since item :math:`i` of epoch :math:`e` depends on (seed, e, i) alone, and the order of pass
:math:`e` on (seed, e) alone, a loader given that position by :meth:`StreamLoader.load_state_dict`
skips the first ``k`` batches of pass ``e`` without reading them and then yields exactly the
batches an uninterrupted loader would have, with any number of workers.
"""

from __future__ import annotations

import itertools
from typing import Callable, Hashable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from ..errors import DalabError, DataError

__all__ = ["SeededShuffle", "Shard", "Epoched", "SizeGroupedBatches", "StreamLoader", "FileSplit", "one_line",
           "size_groups"]


class SeededShuffle(RandomSampler):
    """A RandomSampler whose order in epoch ``e`` is seeded by ``seed + e`` (as DistributedSampler)."""

    def __init__(self, data, seed: int):
        super().__init__(data, generator=torch.Generator())
        self.seed = int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + int(epoch))


class Shard(Sampler):
    """Items ``rank, rank + world_size, ...`` in order: the ranks cover the set once, no padding."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = range(int(rank), int(n), int(world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def size_groups(keys: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Batches of at most ``batch_size`` indices with one key each, in the order of their first index.

    Groups keep index order; every index is in exactly one batch (see the module notes)."""
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    b = int(batch_size)
    batches = [g[j:j + b] for g in groups.values() for j in range(0, len(g), b)]
    return sorted(batches, key=lambda batch: batch[0])


class SizeGroupedBatches(Sampler):
    """Evaluation batches that never mix keys (sizes), this rank's share, in a fixed order.

    ``keys[i]``: the key of item ``i`` (e.g. ``((H, W) of the image fed, (H, W) of the label)``).
    Rank ``r`` of ``world_size`` takes batches ``r, r + world_size, ...`` of :func:`size_groups`.
    """

    def __init__(self, keys: Sequence[Hashable], batch_size: int, rank: int = 0, world_size: int = 1):
        if int(batch_size) < 1:
            raise DalabError(f"batch_size must be positive, got {batch_size}")
        if not (int(world_size) >= 1 and 0 <= int(rank) < int(world_size)):
            raise DalabError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        self.batches = size_groups(keys, batch_size)[int(rank)::int(world_size)]

    def __iter__(self):
        return (list(b) for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Epoched(Sampler):
    """A batch sampler of ``[(index, epoch), ...]`` lists: pass k over it is epoch k unless told otherwise.

    ``base``: an item sampler, cut into batches of ``batch_size`` (the last one dropped when
    shorter and ``drop_last``), or, with ``batch_size=None``, a sampler that yields batches. Its
    ``set_epoch`` (if any) is called with the epoch of each pass. :meth:`seek` makes the next pass
    epoch ``e`` starting after its first ``k`` batches (their indices are skipped, nothing is read).
    """

    def __init__(self, base: Sampler, batch_size: int | None = None, drop_last: bool = False):
        self.base = base
        self.batch_size = None if batch_size is None else int(batch_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0   # the epoch of the next pass
        self.skip = 0    # batches of the next pass already consumed

    def set_epoch(self, epoch: int) -> None:
        self.seek(epoch, 0)

    def seek(self, epoch: int, batches: int = 0) -> None:
        if int(epoch) < 0 or int(batches) < 0:
            raise DalabError(f"a loader position is (epoch >= 0, batch >= 0), got ({epoch}, {batches})")
        self.epoch, self.skip = int(epoch), int(batches)

    def _batches(self):
        if self.batch_size is None:
            return iter(self.base)
        it, b = iter(self.base), self.batch_size

        def chunks():
            while True:
                batch = list(itertools.islice(it, b))
                if not batch or (self.drop_last and len(batch) < b):
                    return
                yield batch
        return chunks()

    def __iter__(self):
        # a generator: the epoch is taken when the first batch is asked for, so an iterator that a
        # DataLoader makes and throws away unused does not count as a pass
        epoch, skip = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
        for batch in itertools.islice(self._batches(), skip, None):
            # an item sampler may tag its items itself, (index, epoch, extra...): e.g. rare-class sampling's class
            yield [(int(i), epoch) if not isinstance(i, tuple) else (int(i[0]), epoch, *i[2:]) for i in batch]

    def __len__(self) -> int:
        n = len(self.base)
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def one_line(e: DataError) -> str:
    """torch re-raises a worker's exception with its whole traceback; keep the original message."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    for prefix in (f"{type(e).__module__}.{type(e).__qualname__}: ", f"{type(e).__qualname__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last


class StreamLoader(DataLoader):
    """A ``DataLoader`` over an :class:`Epoched` batch sampler.

    Each pass is one epoch; :meth:`set_epoch` sets the next one and :meth:`forever` cycles epochs
    for a step-based training loop. :meth:`state_dict` / :meth:`load_state_dict` save and restore
    the position in the stream (see the module notes). A DataError raised in a worker comes back
    as the same one-line DataError.
    """

    def __init__(self, dataset: Dataset, batch_sampler: Epoched, **kwargs):
        if not isinstance(batch_sampler, Epoched):
            raise DalabError("a StreamLoader takes an Epoched batch sampler")
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._pass: list[int] | None = None  # [epoch, batches yielded] of the pass in progress

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)
        self._pass = None

    @property
    def epoch(self) -> int:
        """The epoch the next pass will be."""
        return self.batch_sampler.epoch

    def state_dict(self) -> dict:
        """``{"epoch": e, "batch": k}``: ``k`` batches of pass ``e`` consumed (``k = 0``: pass ``e`` is next)."""
        if self._pass is not None:
            e, k = self._pass
            if k < len(self):
                return {"epoch": e, "batch": k}
            return {"epoch": e + 1, "batch": 0}
        return {"epoch": self.batch_sampler.epoch, "batch": self.batch_sampler.skip}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position of :meth:`state_dict`: the next pass is its epoch, after its batches."""
        try:
            e, k = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError):
            raise DalabError(f"a loader state is {{'epoch': int, 'batch': int}}, got {state!r}") from None
        if k > len(self):
            raise DalabError(f"a loader state of batch {k} in a pass of {len(self)} batches")
        self.batch_sampler.seek(e, k)
        self._pass = None

    def __iter__(self):
        position = [self.batch_sampler.epoch, self.batch_sampler.skip]
        self._pass = position
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except DataError as e:
                raise type(e)(one_line(e)) from None
            position[1] += 1
            yield batch

    def forever(self, start_epoch: int | None = None):
        """Batches without end, epoch after epoch (from ``start_epoch`` when given, else from the
        current position)."""
        if start_epoch is not None:
            self.set_epoch(start_epoch)
        while True:
            yield from self


class FileSplit:
    """The base of a split read from files: ``len``, ``name``, ``labelled`` and :meth:`dataset`.

    ``streamed`` is True (an in-memory :class:`~dalab.data.domains.Split` has False);
    ``tensors()``, ``x`` and ``y`` raise a DataError rather than read every file into memory.
    Subclasses define ``__len__``, ``name``, ``labelled``, :meth:`dataset` and, for evaluation
    batches of one size, :meth:`batch_keys`.
    """

    streamed = True
    name: str = "split"
    labelled: bool = True
    #: how a list of items becomes a batch (``None``: torch's default collate); set it in a subclass as
    #: ``collate_fn = staticmethod(fn)``
    collate_fn: Callable | None = None
    #: the loader class (a :class:`StreamLoader`; e.g. one that counts what its dataset reports)
    loader_class: type = None

    def __len__(self) -> int:
        raise NotImplementedError

    def _refuse(self, what: str):
        raise DataError(f"{self.name}: a streamed split ({len(self)} images read from files), so it has "
                        f"no {what}; read it with .loader(batch_size, train=...)")

    def tensors(self, *args, **kwargs):
        self._refuse("in-memory tensors")

    @property
    def x(self):
        self._refuse("image array x")

    @property
    def y(self):
        self._refuse("label array y")

    def dataset(self, train: bool, seed: int = 0, **kwargs) -> Dataset:
        """The map-style dataset read by :meth:`loader`; item ``(i, epoch)`` is item ``i`` of that epoch."""
        raise NotImplementedError

    def batch_keys(self, data: Dataset) -> Sequence[Hashable] | None:
        """The key of each item of ``data`` for evaluation batches (items of one key stack); None: one key."""
        return None

    def check_training(self, data: Dataset, batch_size: int) -> None:
        """Refuse a training set-up before anything is read (e.g. a crop larger than the images)."""

    def loader(self, batch_size: int, train: bool, workers: int = 2, seed: int = 0, rank: int = 0,
               world_size: int = 1, pin_memory: bool | None = None, sampler: Sampler | None = None,
               **dataset_args) -> StreamLoader:
        """A :class:`StreamLoader` over ``self.dataset(train, seed=seed, **dataset_args)``.

        Training: shuffled (``DistributedSampler(shuffle=True, seed, drop_last=True)`` over
        ``world_size`` ranks, else :class:`SeededShuffle`), or drawn by ``sampler`` (this rank's
        items, e.g. :class:`~dalab.data.rcs.RareClassDataSampler`), full batches only. Evaluation:
        :class:`SizeGroupedBatches` over :meth:`batch_keys`: every item once over all ranks, a
        batch never mixes keys. ``pin_memory`` defaults to whether CUDA is available.
        """
        if int(batch_size) < 1:
            raise DalabError(f"batch_size must be positive, got {batch_size}")
        if int(workers) < 0:
            raise DalabError(f"workers must be 0 or more, got {workers}")
        if not (int(world_size) >= 1 and 0 <= int(rank) < int(world_size)):
            raise DalabError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        batch_size, workers, rank, world_size = int(batch_size), int(workers), int(rank), int(world_size)
        data = self.dataset(train, seed=seed, **dataset_args)
        if train:
            self.check_training(data, batch_size)
            base = sampler if sampler is not None else (
                DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
                if world_size > 1 else SeededShuffle(data, seed))
            if len(base) < batch_size:
                raise DataError(f"{self.name}: {len(base)} images per rank, fewer than one batch of "
                                f"{batch_size} (training keeps full batches only)")
            batches = Epoched(base, batch_size, drop_last=True)
        else:
            keys = self.batch_keys(data)
            batches = Epoched(SizeGroupedBatches([0] * len(data) if keys is None else keys, batch_size, rank,
                                                 world_size))
        return (self.loader_class or StreamLoader)(data, batches, num_workers=workers, collate_fn=self.collate_fn,
                            pin_memory=torch.cuda.is_available() if pin_memory is None else bool(pin_memory),
                            persistent_workers=workers > 0)
