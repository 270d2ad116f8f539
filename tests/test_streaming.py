"""Files streamed by a DataLoader (data/streaming.py): epoch-aware batches, size-grouped evaluation
batches over ranks, the loader's saved position (bit-exact resume) and one-line worker errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset

from dalab.data.streaming import (Epoched, FileSplit, SeededShuffle, Shard, SizeGroupedBatches, StreamLoader,
                                  size_groups)
from dalab.errors import DalabError, DataError


class Draws(Dataset):
    """Item ``(i, epoch)``: (i, epoch, a number drawn from default_rng([seed, epoch, i])); index 13 is bad."""

    def __init__(self, n: int, seed: int, bad: int | None = None):
        self.n, self.seed, self.bad = n, seed, bad

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        i, e = key
        if i == self.bad:
            raise DataError(f"item {i}: a damaged file")
        return torch.tensor([i, e, int(np.random.default_rng([self.seed, e, i]).integers(1 << 40))])


class DrawSplit(FileSplit):
    def __init__(self, n: int, keys=None, bad=None):
        self.n, self.keys, self.bad, self.name = n, keys, bad, "draws"

    def __len__(self):
        return self.n

    def dataset(self, train, seed=0):
        return Draws(self.n, seed, self.bad)

    def batch_keys(self, data):
        return self.keys


def rows(batches):
    return [b.tolist() for b in batches]


# ------------------------------------------------------------------------ size-grouped batches

@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.integers(0, 3), max_size=40), b=st.integers(1, 6), world=st.integers(1, 4))
def test_grouped_batches_cover_every_item_once_with_one_key_each(keys, b, world):
    whole = size_groups(keys, b)
    shards = [SizeGroupedBatches(keys, b, r, world).batches for r in range(world)]
    items = [i for s in shards for batch in s for i in batch]
    assert sorted(items) == list(range(len(keys)))                   # every item once over the ranks
    for batch in whole:
        assert 1 <= len(batch) <= b and len({keys[i] for i in batch}) == 1 and batch == sorted(batch)
    assert [batch[0] for batch in whole] == sorted(batch[0] for batch in whole)
    for r in range(world):
        assert shards[r] == whole[r::world]                           # dealt in turn
    # full batches: a group of n items gives ceil(n / b) batches, so at most one short batch per key
    for k in set(keys):
        assert sum(1 for batch in whole if keys[batch[0]] == k) == -(-keys.count(k) // b)


def test_grouped_batches_are_deterministic_and_follow_the_keys_alone():
    keys = ["big", "big", "small", "big", "small", "small", "big", "odd"]
    assert size_groups(keys, 2) == [[0, 1], [2, 4], [3, 6], [5], [7]]
    assert SizeGroupedBatches(keys, 2, 1, 2).batches == [[2, 4], [5]]
    assert SizeGroupedBatches(keys, 2, 1, 2).batches == SizeGroupedBatches(list(keys), 2, 1, 2).batches
    assert size_groups([0] * 5, 2) == [[0, 1], [2, 3], [4]]           # one key: consecutive items
    with pytest.raises(DalabError, match="rank 2 is not in 0..world_size-1"):
        SizeGroupedBatches(keys, 2, 2, 2)


def test_evaluation_loader_groups_by_key_over_ranks():
    keys = [i % 3 for i in range(11)]
    split = DrawSplit(11, keys)
    seen = []
    for rank in range(2):
        for b in split.loader(4, False, workers=0, rank=rank, world_size=2):
            ids = b[:, 0].tolist()
            assert len({keys[i] for i in ids}) == 1
            seen += ids
    assert sorted(seen) == list(range(11))


# ------------------------------------------------------------------------ epochs and the loader's position

def test_epoched_tags_indices_and_counts_passes():
    e = Epoched(Shard(5), batch_size=2)
    assert len(e) == 3 and list(e) == [[(0, 0), (1, 0)], [(2, 0), (3, 0)], [(4, 0)]]
    assert list(e)[0] == [(0, 1), (1, 1)] and e.epoch == 2
    it = iter(e)                                                     # made, never started: not a pass
    del it
    assert e.epoch == 2
    d = Epoched(Shard(5), batch_size=2, drop_last=True)
    assert len(d) == 2 and [len(b) for b in d] == [2, 2]
    d.seek(7, 1)
    assert list(d) == [[(2, 7), (3, 7)]] and d.epoch == 8
    s = SeededShuffle(range(6), seed=3)
    s.set_epoch(1)
    a = list(s)
    s.set_epoch(1)
    assert list(s) == a and sorted(a) == list(range(6))


def test_loader_position_counts_batches_handed_out():
    loader = DrawSplit(10).loader(3, True, workers=0, seed=1)
    assert len(loader) == 3 and loader.state_dict() == {"epoch": 0, "batch": 0}
    it = iter(loader)
    next(it), next(it)
    assert loader.state_dict() == {"epoch": 0, "batch": 2}
    next(it)
    assert loader.state_dict() == {"epoch": 1, "batch": 0}           # a whole pass: the next one is due
    assert json.loads(json.dumps(loader.state_dict())) == {"epoch": 1, "batch": 0}
    loader.set_epoch(5)
    assert loader.state_dict() == {"epoch": 5, "batch": 0} and loader.epoch == 5
    for bad in ({"epoch": 0}, {"epoch": -1, "batch": 0}, {"epoch": 0, "batch": 4}):
        with pytest.raises(DalabError):
            loader.load_state_dict(bad)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("k", [0, 1, 3, 4, 7])
def test_a_resumed_loader_continues_the_exact_stream(workers, k):
    split = DrawSplit(11)
    kw = dict(workers=workers, seed=5)
    ref = split.loader(3, True, **kw).forever()
    stream = [next(ref) for _ in range(12)]                          # 3 full batches an epoch, 4 epochs
    first = split.loader(3, True, **kw)
    it = first.forever()
    assert rows(next(it) for _ in range(k)) == rows(stream[:k])
    state = json.loads(json.dumps(first.state_dict()))               # what a checkpoint keeps
    assert state == {"epoch": k // 3, "batch": k % 3}
    resumed = split.loader(3, True, **kw)
    resumed.load_state_dict(state)
    again = resumed.forever()
    assert rows(next(again) for _ in range(12 - k)) == rows(stream[k:])
    assert rows(next(it) for _ in range(12 - k)) == rows(stream[k:])  # the first loader is not disturbed


def test_evaluation_loader_resumes_too():
    split = DrawSplit(9, keys=[i % 2 for i in range(9)])
    whole = rows(split.loader(2, False, workers=0))
    loader = split.loader(2, False, workers=0)
    loader.load_state_dict({"epoch": 0, "batch": 2})
    assert rows(loader) == whole[2:]


# ------------------------------------------------------------------------ refusals and errors

def test_a_split_from_files_refuses_memory_and_bad_arguments():
    split = DrawSplit(4)
    assert split.streamed and len(split) == 4
    for get in (split.tensors, lambda: split.x, lambda: split.y):
        with pytest.raises(DataError, match=r"draws: a streamed split \(4 images read from files\)"):
            get()
    for kw, msg in ((dict(batch_size=0), "batch_size must be positive"), (dict(workers=-1), "workers must be 0"),
                    (dict(rank=2, world_size=2), "rank 2 is not in"), (dict(batch_size=5), "fewer than one batch")):
        args = dict(batch_size=2, train=True, workers=0) | kw
        with pytest.raises(DalabError, match=msg):
            split.loader(**args)
    with pytest.raises(DalabError, match="Epoched batch sampler"):
        StreamLoader(Draws(3, 0), batch_sampler=None)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_worker_error_is_one_line(workers):
    loader = DrawSplit(20, bad=13).loader(4, False, workers=workers)
    with pytest.raises(DataError) as e:
        list(loader)
    assert str(e.value) == "item 13: a damaged file"
