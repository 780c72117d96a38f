"""DataModules: ``PromptDataModule`` (prompt batches for RL steps, held-out prompts for validation)
and ``TrajectoryDataModule`` (batches of stored trajectories, no generation; the same validation)."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch.utils.data import DataLoader

from tbrm.data.loader import ResumableDataLoader
from tbrm.data.trajectories import BadTrajectoryError, load_trajectories

log = logging.getLogger(__name__)


def collate_prompts(rows: list[dict]) -> dict[str, list]:
    """Batch prompt records as lists (``prompt``, ``answer``; other fields kept as lists too)."""
    return {key: [row[key] for row in rows] for key in rows[0]}


class PromptDataModule(L.LightningDataModule):
    """Prompt records ``{"prompt", "answer", ...}`` from a task with ``splits()``.

    Args:
        task: an object whose ``splits()`` returns ``{"train", "validation", "test"}`` record lists
            (e.g. ``tbrm.data.arithmetic.ArithmeticTask``).
        batch_size: prompts per RL step, over all ranks (each of ``world`` data-parallel ranks
            samples ``batch_size / world`` of them, ``tbrm.data.loader``).
        val_batch_size: prompts per validation generate call (per rank; each rank validates on
            its own part of the split).
        num_workers: DataLoader workers (0: in the main process).
    """

    def __init__(self, task, batch_size: int = 64, val_batch_size: int = 500, num_workers: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or val_batch_size < 1:
            raise ValueError(
                f"data.batch_size and data.val_batch_size must be >= 1 (got {batch_size}, {val_batch_size})."
            )
        self.task = task
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers

    @property
    def ranks(self) -> tuple[int, int]:
        """``(rank, world)`` of the trainer this DataModule feeds (``(0, 1)`` without one)."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        records = self.task.splits()[split]
        if not records:
            raise ValueError(f"the task's {split!r} split is empty; check the data config.")
        if shuffle:
            return self._shuffled(records, batch_size, collate_prompts)
        rank, world = self.ranks  # each rank validates on its part; the module sums the counts
        return DataLoader(records[rank::world], batch_size=batch_size, collate_fn=collate_prompts,
                          num_workers=self.num_workers)  # fmt: skip

    def skipped_rows(self) -> dict[str, int]:
        """Bad rows skipped per split (``skip_bad_rows=true``), for the logs and ``summary.json``."""
        return dict(getattr(self.task, "skipped", {}))

    def _shuffled(self, records: list, batch_size: int, collate_fn) -> ResumableDataLoader:
        """Training batches in a new order each epoch, from the run's seed; resumable, so a resumed
        run sees the batches the uninterrupted one would. ``batch_size`` units per step over all
        ranks; this rank gets its part."""
        rank, world = self.ranks
        if batch_size % world:
            raise ValueError(
                f"data.batch_size ({batch_size}{' groups' if collate_fn is collate_trajectories else ''}) must "
                f"divide by the {world} data-parallel ranks (trainer.devices x trainer.num_nodes)."
            )
        return ResumableDataLoader(
            records,
            batch_size=batch_size // world,
            drop_last=len(records) >= batch_size,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(torch.initial_seed() % 2**63),
            rank=rank,
            world=world,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)


def collate_trajectories(rows: list[dict]) -> dict[str, list]:
    """Batch trajectory records (flattened from their groups) as lists, like prompt batches."""
    rows = [r for group in rows for r in (group if isinstance(group, list) else [group])]
    return {**collate_prompts(rows), "records": rows}


def group_units(records: list[dict], n: int, where: str) -> list[list[dict]]:
    """Records in units of ``n`` adjacent rows with one prompt (GRPO's groups), which the loader
    shuffles whole."""
    if len(records) % n:
        raise ValueError(f"{where}: {len(records)} trajectories do not split into groups of {n}.")
    units = [records[i : i + n] for i in range(0, len(records), n)]
    for i, unit in enumerate(units):
        if len({r["prompt"] for r in unit}) != 1:
            raise BadTrajectoryError(
                f"{where}: rows {i * n}..{i * n + n - 1} should be one prompt's group of {n} completions "
                f"(as a run with rollout.n={n} dumps them); set rollout.n to the file's group size."
            )
    return units


class TrajectoryDataModule(PromptDataModule):
    """Training batches of stored trajectories (no generation); validation on ``task``'s held-out prompts.

    Args:
        task: the task whose ``validation`` / ``test`` prompts measure the policy (and whose warm
            start is the default initial policy).
        path: a trajectory file, or a folder of shards (a run's ``rollouts/``); or
        name, subset, split: a hub dataset of trajectory records.
        batch_size: trajectories per training step (a multiple of ``group_size``).
        group_size: completions per prompt kept together (``rollout.n``; GRPO's groups).
        skip_bad_rows: skip (and count) malformed rows instead of failing on the first.
    """

    def __init__(
        self,
        task,
        path: str | None = None,
        *,
        name: str | None = None,
        subset: str | None = None,
        split: str = "train",
        batch_size: int = 128,
        val_batch_size: int = 500,
        group_size: int = 1,
        skip_bad_rows: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__(task, batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers)
        if not isinstance(group_size, int) or group_size < 1 or batch_size % group_size:
            raise ValueError(
                f"data.batch_size ({batch_size}) must be a multiple of the group size rollout.n ({group_size})."
            )
        if not path and not name:
            raise ValueError("data=trajectories needs data.path=<file or folder> (or data.name=<hub dataset>).")
        self.path, self.name, self.subset, self.split = path, name, subset, split
        self.group_size = group_size
        self.skip_bad_rows = skip_bad_rows
        self.skipped = 0
        self._units: list[list[dict]] | None = None

    @property
    def where(self) -> str:
        return str(self.path or self.name)

    def trajectories(self) -> list[list[dict]]:
        if self._units is None:
            records, self.skipped = load_trajectories(
                self.path, name=self.name, subset=self.subset, split=self.split, skip_bad_rows=self.skip_bad_rows
            )
            self._units = group_units(records, self.group_size, self.where)
            log.info("%s: %d trajectories in groups of %d", self.where, len(records), self.group_size)
        return self._units

    def skipped_rows(self) -> dict[str, int]:
        self.trajectories()  # read now (the first step would read them), to count what was skipped
        return {**super().skipped_rows(), "trajectories": self.skipped}

    def train_dataloader(self):
        return self._shuffled(self.trajectories(), self.batch_size // self.group_size, collate_trajectories)
