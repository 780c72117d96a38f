"""``PromptDataModule``: prompt batches for RL steps and held-out prompts for validation."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader


def collate_prompts(rows: list[dict]) -> dict[str, list]:
    """Batch prompt records as lists (``prompt``, ``answer``; other fields kept as lists too)."""
    return {key: [row[key] for row in rows] for key in rows[0]}


class PromptDataModule(L.LightningDataModule):
    """Prompt records ``{"prompt", "answer", ...}`` from a task with ``splits()``.

    Args:
        task: an object whose ``splits()`` returns ``{"train", "validation", "test"}`` record lists
            (e.g. ``tbrm.data.arithmetic.ArithmeticTask``).
        batch_size: prompts per RL step.
        val_batch_size: prompts per validation generate call.
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

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        records = self.task.splits()[split]
        if not records:
            raise ValueError(f"the task's {split!r} split is empty; check the data config.")
        generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63) if shuffle else None
        return DataLoader(
            records,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(records) >= batch_size,
            collate_fn=collate_prompts,
            num_workers=self.num_workers,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)
