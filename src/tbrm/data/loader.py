"""A shuffled DataLoader that resumes where a checkpoint left it.

Lightning saves the ``state_dict()`` of every train dataloader that has one in its checkpoints and
gives it back through ``load_state_dict()`` on resume (its ``CombinedLoader`` protocol). Here the
state is the shuffling generator's state when the current epoch's order was drawn, and how many
batches of that epoch were handed out: a resumed run draws the same order and starts after those
batches, so it sees exactly the prompts (or stored trajectories) the uninterrupted run would see,
in every later epoch too. The order itself is ``RandomSampler``'s with that generator, so runs
that never stop see what they saw before this loader existed.

Under data parallelism (``world > 1``) every rank draws the same order (the same seed) and takes its
own contiguous part of each global batch of ``batch_size x world`` units: the union of the ranks'
batches is the batch one process would train on, and a unit (a prompt, or a stored GRPO group)
never straddles two ranks. Lightning's own ``DistributedSampler`` is off
(``use_distributed_sampler: false`` in ``conf/trainer/ddp.yaml``).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, RandomSampler


class SkippingRandomSampler(RandomSampler):
    """``RandomSampler``'s order (one ``randperm`` per pass, drawn when the pass starts, so the
    generator moves the same whether or not the pass is read to its end); the next pass leaves
    out its first ``skip`` indices of that order. With ``world > 1``: ``rank``'s part of each
    global batch of ``batch_size x world`` indices (whole global batches only)."""

    def __init__(self, data_source, generator: torch.Generator, *, batch_size: int = 1, rank: int = 0,
                 world: int = 1) -> None:  # fmt: skip
        super().__init__(data_source, generator=generator)
        self.skip, self.batch_size, self.rank, self.world = 0, batch_size, rank, world

    def __len__(self) -> int:
        if self.world == 1:
            return len(self.data_source)
        return len(self.data_source) // (self.batch_size * self.world) * self.batch_size

    def __iter__(self):
        skip, self.skip = self.skip, 0
        order = torch.randperm(len(self.data_source), generator=self.generator).tolist()
        if self.world == 1:
            return iter(order[skip:])
        size = self.batch_size * self.world
        starts = range(skip, len(order) - size + 1, size)
        first = self.rank * self.batch_size
        return iter(i for s in starts for i in order[s + first : s + first + self.batch_size])


class ResumableDataLoader(DataLoader):
    """A shuffling ``DataLoader`` (one ``generator`` draws every epoch's order) with the
    ``state_dict`` / ``load_state_dict`` that Lightning checkpoints.

    Args:
        dataset: the records (a list).
        batch_size, drop_last, collate_fn, num_workers: as for ``DataLoader`` (``batch_size``: this
            rank's part of a step's batch).
        generator: the generator every epoch's order comes from (seeded by the caller, the same on
            every rank).
        rank, world: this process's rank and the number of ranks sharing each step's batch.
    """

    def __init__(self, dataset, *, batch_size: int, generator: torch.Generator, drop_last: bool, collate_fn,
                 num_workers: int = 0, rank: int = 0, world: int = 1) -> None:  # fmt: skip
        if world > 1 and len(dataset) < batch_size * world:
            raise ValueError(
                f"{len(dataset)} training units cannot fill one step of {batch_size} per rank on {world} ranks; "
                "lower data.batch_size or use more data."
            )
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=SkippingRandomSampler(dataset, generator, batch_size=batch_size, rank=rank, world=world),
            generator=generator,  # DataLoader draws its workers' base seed from it too, as with shuffle=True
            drop_last=drop_last,
            collate_fn=collate_fn,
            num_workers=num_workers,
        )
        self._epoch_start = generator.get_state()
        self._handed_out = 0
        self._finished = False

    def __iter__(self):
        self._epoch_start = self.generator.get_state()  # before this epoch's order is drawn
        self._handed_out = self.sampler.skip // (self.batch_size * self.sampler.world)
        self._finished = False
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch
        self._finished = True

    def state_dict(self) -> dict:
        if self._finished or self._handed_out >= len(self):  # epoch over: the next starts from the generator now
            return {"generator": self.generator.get_state(), "batches": 0}
        return {"generator": self._epoch_start, "batches": self._handed_out}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.sampler.skip = int(state["batches"]) * self.batch_size * self.sampler.world
