"""Resuming a run exactly: the checkpoint to resume from, the run's own folder, logs and W&B run.

``ckpt_path`` may be a checkpoint file, a run folder (its newest checkpoint) or ``last`` (the
newest checkpoint of the folder this run writes to, set with ``hydra.run.dir=<run>`` or, in a
multirun, ``hydra.sweep.dir=<sweep>``). A resumed run

- continues in the folder of the run it resumes (``hydra.run.dir`` resolves through
  :func:`run_dir`), so there is one folder per run;
- logs to the same W&B run (the id in ``<run>/run.json``, ``resume="allow"``) and to the same CSV,
  whose rows from the checkpoint's step on are dropped and written again (:func:`kept_csv_rows`);
- restores, besides what Lightning restores (weights, optimizer, scheduler, loop counters and the
  data order of ``tbrm.data.loader.ResumableDataLoader``), the RNG states the next rollout draws
  from (:func:`rng_states`), so it produces the same metrics as the run that was not interrupted.

Under data parallelism what differs between ranks (RNG states, replay buffer, counters) is kept
for each rank (``checkpoint["ranks"]``, gathered by rank zero, which writes the file); a run resumes
with the world size it was saved with.
"""

from __future__ import annotations

import csv
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from tbrm.distributed import gather_objects, launch_rank, rank, world_size
from tbrm.io import read_json, write_json

CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"


@dataclass
class Resume:
    """What a training run continues from: ``checkpoint`` (None: a fresh run) at ``step``, the CSV
    rows logged before it, and the W&B run id of ``<run>/run.json``."""

    checkpoint: Path | None
    step: int
    csv_rows: list[dict]
    wandb_id: str

    @classmethod
    def prepare(cls, ckpt_path: str | None, output_dir: str | Path) -> Resume:
        """Find the checkpoint ``ckpt_path`` names (or fail, before any work) and what the run logged
        before it (read now: the CSV logger clears the file when it starts)."""
        checkpoint = checkpoint_to_resume(ckpt_path, output_dir)
        step = checkpoint_step(checkpoint) if checkpoint else 0
        rows = kept_csv_rows(Path(output_dir) / "csv" / "metrics.csv", step) if checkpoint else []
        return cls(checkpoint, step, rows, run_record(output_dir, resuming=checkpoint is not None)["wandb_id"])

    def logger_options(self) -> dict:
        """The resume arguments of ``tbrm.utils.build_loggers``."""
        return {"wandb_id": self.wandb_id, "resume": self.checkpoint is not None, "csv_rows": self.csv_rows}


def rng_states() -> dict:
    """The global RNG states of torch (CPU and every GPU), numpy and Python, in types that
    ``torch.load(weights_only=True)`` (Lightning's default) reads back."""
    import torch

    states = _collect_rng_states(include_cuda=torch.cuda.is_available())
    if "numpy" in states:
        kind, keys, *rest = states["numpy"]
        states["numpy"] = (kind, keys.tolist(), *rest)
    return states


def set_rng_states(states: dict) -> None:
    import torch

    if not torch.cuda.is_available():
        states = {k: v for k, v in states.items() if k != "torch.cuda"}
    _set_rng_states(states)


# what RLModule keeps across a resume besides its weights (``on_save_checkpoint``)
MODULE_STATE = ("completions_seen", "generated", "tokens_seen", "train_time_s", "invalid_rewards",
                "nonfinite_skipped", "last_val_step", "initial_metrics")  # fmt: skip


def save_module_state(module, checkpoint: dict) -> None:
    """Counters, metrics before training, wall time so far, the RNG states the next rollout draws
    from, and the replay buffer, into a Lightning checkpoint: one entry per rank (called on every
    rank, which all take part in the gather)."""
    state = {key: getattr(module, key) for key in MODULE_STATE}
    state["wall_time_s"] = module.wall_time_s
    state["rng_states"] = rng_states()
    if module.replay is not None:
        state["replay"] = module.replay.state_dict()
    checkpoint["ranks"] = gather_objects(state)


def load_module_state(module, checkpoint: dict) -> None:
    ranks = checkpoint.get("ranks", [checkpoint])  # a checkpoint from before per-rank state: its top level
    if len(ranks) != world_size():
        raise ValueError(
            f"the checkpoint was saved by {len(ranks)} data-parallel rank(s) and this run has {world_size()}; "
            "resume with the trainer.devices and trainer.num_nodes it was saved with."
        )
    state = ranks[rank()]
    for key in MODULE_STATE:
        if key in state:
            setattr(module, key, state[key])
    module.wall_time_before = state.get("wall_time_s", 0.0)
    if "rng_states" in state:
        set_rng_states(state["rng_states"])
    if module.replay is not None and "replay" in state:
        module.replay.load_state_dict(state["replay"])


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra").is_dir()


def newest_checkpoint(run: Path) -> Path | None:
    """``<run>/checkpoints/last.ckpt`` (written at every validation and on a signal) unless a
    Slurm requeue checkpoint of Lightning's (``<run>/hpc_ckpt_*.ckpt``) is newer; without either,
    the newest other ``.ckpt`` of ``<run>/checkpoints``."""
    newest = lambda paths: max(paths, key=lambda p: p.stat().st_mtime) if paths else None  # noqa: E731
    last = run / CHECKPOINTS / "last.ckpt"
    candidates = [p for p in (last if last.is_file() else None, newest(list(run.glob("hpc_ckpt_*.ckpt")))) if p]
    return newest(candidates) or newest(list((run / CHECKPOINTS).glob("*.ckpt")))


def checkpoint_to_resume(ckpt_path: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint file ``ckpt_path`` names (see the module docstring), checked before any work."""
    if ckpt_path is None:
        return None
    output_dir = Path(output_dir)
    if str(ckpt_path) == "last":
        found = newest_checkpoint(output_dir)
        if found is None:
            raise FileNotFoundError(
                f"ckpt_path=last: no checkpoint in {output_dir / CHECKPOINTS}. Resume a run with "
                "ckpt_path=<run>/checkpoints/last.ckpt or ckpt_path=<run folder> (or hydra.run.dir=<run folder> "
                "ckpt_path=last); drop ckpt_path to start from scratch."
            )
        return found
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        found = newest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: the folder holds no checkpoint (no {CHECKPOINTS}/*.ckpt).")
        return found
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} does not exist; give a checkpoint file (<run>/checkpoints/last.ckpt), a run "
            "folder, or ckpt_path=last with hydra.run.dir=<run folder>."
        )
    return path


def run_dir(ckpt_path: str | None, default: str) -> str:
    """``hydra.run.dir``: the folder of the run ``ckpt_path`` resumes, else ``default`` (a new one)."""
    if ckpt_path is None or str(ckpt_path) == "last":
        return default
    path = Path(str(ckpt_path)).expanduser()
    for candidate in (path, path.parent, path.parent.parent):
        if path.exists() and is_run_dir(candidate):
            return str(candidate)
    return default


def checkpoint_step(path: str | Path) -> int:
    """The global step a Lightning checkpoint was saved at (its tensors memory-mapped, not read)."""
    import torch

    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])


def run_record(output_dir: str | Path, resuming: bool) -> dict:
    """``<run>/run.json``: the W&B run id, kept so that a resumed run logs to the same W&B run.
    A fresh run gets a new id; a resumed one reads it back (or makes one, for a run from before).
    Only the process a user started writes it (rank zero, which alone logs to W&B)."""
    path = Path(output_dir) / RUN_FILE
    record = read_json(path) if resuming and path.exists() else {}
    if launch_rank() != 0:
        return {"wandb_id": record.get("wandb_id")}
    if "wandb_id" not in record:
        alphabet = string.ascii_lowercase + string.digits  # the shape of wandb's own run ids
        record["wandb_id"] = "".join(secrets.choice(alphabet) for _ in range(8))
        write_json(path, record)
    return record


def _number(text: str) -> int | float:
    """A CSV cell as the number it was logged as (``4`` stays an int, so it is written back as ``4``)."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def kept_csv_rows(csv_path: str | Path, step: int) -> list[dict]:
    """The rows of a run's ``metrics.csv`` logged before the checkpoint at global step ``step``
    (numbers, empty cells dropped), to be written again by the resumed run's CSV logger, which starts
    the file anew. Lightning logs a step's training row and the validation after it at the step's
    index (0 for the first step), so the checkpoint after ``step`` steps follows the rows below ``step``."""
    path = Path(csv_path)
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        rows = [{k: _number(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(file)]
    return [row for row in rows if "step" in row and row["step"] < step]
