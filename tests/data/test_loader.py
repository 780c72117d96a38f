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
