"""The resumable train loader: the order of ``DataLoader(shuffle=True)`` with the same generator, and
a loader restored from ``state_dict()`` at any batch continues with exactly the batches that follow."""

import pytest
import torch
from torch.utils.data import DataLoader

from tbrm.data.loader import ResumableDataLoader

DATA = list(range(11))  # 3 batches of 3 per epoch, 2 records dropped


def keep(rows):
    return rows


def resumable():
    return ResumableDataLoader(DATA, batch_size=3, drop_last=True, collate_fn=keep,
                               generator=torch.Generator().manual_seed(7))  # fmt: skip


def epochs(loader, n):
    """``n`` epochs read as Lightning reads a loader of known length (``len`` batches, no more)."""
    out = []
    for _ in range(n):
        it = iter(loader)
        out += [next(it) for _ in range(len(loader))]
    return out


def test_the_order_is_that_of_a_shuffling_dataloader():
    plain = DataLoader(DATA, batch_size=3, shuffle=True, drop_last=True, collate_fn=keep,
                       generator=torch.Generator().manual_seed(7))  # fmt: skip
    ours = epochs(resumable(), 4)
    assert ours == epochs(plain, 4) and ours[:3] != ours[3:6]  # a new order each epoch


@pytest.mark.parametrize("taken", range(1, 10))
def test_a_restored_loader_continues_with_the_next_batch(taken):
    reference = epochs(resumable(), 4)
    loader, seen = resumable(), []
    while len(seen) < taken:  # read ``taken`` batches, across epochs, then save the state
        it = iter(loader)
        seen += [next(it) for _ in range(min(len(loader), taken - len(seen)))]
    state = loader.state_dict()
    restored = resumable()
    restored.load_state_dict(state)
    rest = []
    if taken % 3:  # Lightning finishes the epoch it was in, then starts new ones
        it = iter(restored)
        rest += [next(it) for _ in range(3 - taken % 3)]
    rest += epochs(restored, 3)
    assert seen + rest[: len(reference) - taken] == reference


def sharded(rank, world=2, per_rank=3, data=range(23)):
    return ResumableDataLoader(list(data), batch_size=per_rank, drop_last=True, collate_fn=keep, rank=rank,
                               world=world, generator=torch.Generator().manual_seed(7))  # fmt: skip


def test_ranks_take_disjoint_parts_of_the_one_process_batches():
    whole = epochs(ResumableDataLoader(list(range(23)), batch_size=6, drop_last=True, collate_fn=keep,
                                       generator=torch.Generator().manual_seed(7)), 2)  # fmt: skip
    parts = [epochs(sharded(rank), 2) for rank in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 6  # 3 global batches of 6 per epoch
    for batch, first, second in zip(whole, *parts, strict=True):
        assert first + second == batch and not set(first) & set(second)


@pytest.mark.parametrize("taken", range(1, 7))
def test_a_restored_rank_continues_with_its_part_of_the_next_batch(taken):
    for rank in (0, 1):
        reference = epochs(sharded(rank), 3)
        loader, seen = sharded(rank), []
        while len(seen) < taken:
            it = iter(loader)
            seen += [next(it) for _ in range(min(len(loader), taken - len(seen)))]
        restored = sharded(rank)
        restored.load_state_dict(loader.state_dict())
        rest = []
        if taken % 3:  # the epoch it was in, then new ones
            it = iter(restored)
            rest += [next(it) for _ in range(3 - taken % 3)]
        rest += epochs(restored, 2)
        assert seen + rest[: len(reference) - taken] == reference


def test_too_little_data_for_one_step_on_every_rank_is_refused():
    with pytest.raises(ValueError, match="cannot fill one step of 3 per rank on 2 ranks"):
        sharded(0, data=range(5))
