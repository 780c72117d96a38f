"""Off-policy trajectories: the record, a crash-safe writer, a reader, generation, a dump
callback, and the conversion to the :class:`~tbrm.rollout.batch.RolloutBatch` the module trains on.

A trajectory record (one row per completion; jsonl or parquet)::

    {"prompt": str, "completion": str, "answer": str, "reward": float,
     "behavior_logprobs": [float] | None,   # log-probs of the completion's tokens when sampled
     "completion_ids": [int] | None,         # the exact tokens (else the text is re-tokenized)
     "finished": bool | None,                # the completion ended with EOS
     "policy": str | None, "step": int | None, "temperature": float | None, "top_p": float | None}

TBRM learns from any such file as is (DESIGN.md: no importance weights, no clipping); GRPO and
PPO also need ``behavior_logprobs`` for their ratios. A run's rollouts are dumped one shard per
step (``rollouts-step000012-rank0.jsonl``), each written to a temporary file and renamed into
place, so a crash never leaves a half-written file; a folder of shards reads back as one set.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lightning.pytorch import Callback

if TYPE_CHECKING:
    from tbrm.rollout.engine import RolloutEngine

log = logging.getLogger(__name__)

FIELDS = (
    "prompt",
    "completion",
    "answer",
    "reward",
    "behavior_logprobs",
    "completion_ids",
    "finished",
    "policy",
    "step",
    "temperature",
    "top_p",
)
FORMATS = ("jsonl", "parquet")


class BadTrajectoryError(ValueError):
    """A trajectory row that cannot be trained on."""


# ------------------------------------------------------------------------------------ records
def records_from_rollout(rollout, rewards, *, eos_token_id: int, policy: str | None = None, step: int | None = None,
                         temperature: float | None = None, top_p: float | None = None) -> list[dict]:  # fmt: skip
    """One record per completion of ``rollout`` (a ``RolloutBatch``) with its reward."""
    records = []
    lengths = rollout.completion_mask.sum(1).tolist()
    ids = rollout.completion_ids.tolist()
    behavior = rollout.behavior_log_probs.tolist()
    for i, length in enumerate(lengths):
        length = int(length)
        records.append(
            {
                "prompt": rollout.prompts[i],
                "completion": rollout.completions[i],
                "answer": str(rollout.answers[i]),
                "reward": float(rewards[i]),
                "behavior_logprobs": behavior[i][:length],
                "completion_ids": ids[i][:length],
                "finished": bool(length and ids[i][length - 1] == eos_token_id),
                "policy": policy,
                "step": step,
                "temperature": temperature,
                "top_p": top_p,
            }
        )
    return records


def validate_record(row: dict, where: str) -> dict:
    """The row as a full record (missing optional fields None), or a BadTrajectoryError naming it."""

    def bad(problem: str) -> BadTrajectoryError:
        return BadTrajectoryError(f"{where}: {problem}. Fix the row, or set data.skip_bad_rows=true to skip such rows.")

    if not isinstance(row.get("prompt"), str) or not row["prompt"]:
        raise bad(f"`prompt` must be a non-empty string (got {row.get('prompt')!r:.60})")
    # an empty text is a completion only when its tokens are stored (an EOS the text drops)
    if not isinstance(row.get("completion"), str) or not (row["completion"] or row.get("completion_ids")):
        raise bad(f"`completion` must be a non-empty string (got {row.get('completion')!r:.60})")
    reward = row.get("reward")
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise bad(f"`reward` must be a finite number (got {reward!r:.60})")
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise bad(f"`answer` must be a string or a number (got {answer!r:.60})")
    record = {key: row.get(key) for key in FIELDS}
    record["reward"] = float(reward)
    record["answer"] = "" if answer is None else str(answer)
    for key, kind in (("behavior_logprobs", (int, float)), ("completion_ids", (int,))):
        value = record[key]
        if value is None:
            continue
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value
        ):
            raise bad(f"`{key}` must be a list of {'numbers' if key == 'behavior_logprobs' else 'integers'}")
        record[key] = list(value)
    ids, behavior = record["completion_ids"], record["behavior_logprobs"]
    if ids is not None and behavior is not None and len(ids) != len(behavior):
        raise bad(f"`behavior_logprobs` has {len(behavior)} entries for {len(ids)} `completion_ids`")
    return record


def check_stored(records: list[dict], objective, temperature: float, where: str) -> None:
    """Stored trajectories must carry what ``objective`` needs: behaviour log-probs for its ratios,
    sampled at ``temperature``, the one its update scales by (``rollout.temperature``)."""
    if not objective.needs_behavior_log_probs:
        return
    missing = sum(r.get("behavior_logprobs") is None for r in records)
    if missing:
        raise ValueError(
            f"{objective.name} needs the behaviour log-probs of every trajectory for its ratios, but "
            f"{missing} of {len(records)} {where} have none; dump rollouts from a run (callbacks.rollout_dump) "
            "or use mode=generate, which store them, or train with algorithm=tbrm."
        )
    other = {r["temperature"] for r in records if r.get("temperature") not in (None, temperature)}
    if other:
        raise ValueError(
            f"{where} were sampled at temperature {sorted(other)} but rollout.temperature is {temperature}; "
            f"{objective.name}'s ratios need them equal: set rollout.temperature={sorted(other)[0]}."
        )


# -------------------------------------------------------------------------------- write, read
class TrajectoryWriter:
    """Writes shards of trajectory records into ``dirpath``, each atomically (temp file + rename)."""

    def __init__(self, dirpath: str | Path, fmt: str = "jsonl", rank: int = 0) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"trajectory format must be one of {FORMATS} (got {fmt!r}).")
        self.dirpath = Path(dirpath)
        self.fmt = fmt
        self.rank = rank  # the shards' rank when write() is not told one (mode=generate on N processes)

    def write(self, records: list[dict], *, step: int, rank: int | None = None) -> Path:
        rank = self.rank if rank is None else rank
        self.dirpath.mkdir(parents=True, exist_ok=True)
        final = self.dirpath / f"rollouts-step{step:06d}-rank{rank}.{self.fmt}"
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            if self.fmt == "jsonl":
                text = "".join(json.dumps(r) + "\n" for r in records)
                with open(tmp, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                import datasets

                datasets.Dataset.from_list(records).to_parquet(str(tmp))
            os.replace(tmp, final)  # atomic: readers see the whole shard or none of it
        finally:
            tmp.unlink(missing_ok=True)
        return final


def trajectory_files(path: str | Path) -> list[Path]:
    """The files behind ``path``: itself, or a folder's ``*.jsonl`` / ``*.parquet`` shards in order."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet") and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"trajectory folder {path} holds no .jsonl or .parquet files.")
        if len({p.suffix for p in files}) > 1:
            raise ValueError(f"trajectory folder {path} mixes .jsonl and .parquet files; keep one format.")
        return files
    raise FileNotFoundError(f"trajectory path {path} does not exist; give a file, a folder of shards or a hub name.")


def load_trajectories(
    path: str | None = None,
    *,
    name: str | None = None,
    subset: str | None = None,
    split: str = "train",
    skip_bad_rows: bool = False,
) -> tuple[list[dict], int]:
    """``(records, skipped)`` from a local file or folder (``path``) or a hub dataset (``name``)."""
    import datasets

    if path:
        files = trajectory_files(path)
        if files[0].suffix == ".jsonl":  # row by row: each row keeps its own types, errors name the line
            lines = [(f, i, line) for f in files for i, line in enumerate(f.read_text().splitlines())]
            rows = [(f"{f}, row {i}", line) for f, i, line in lines if line.strip()]
        else:
            table = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
            rows = [(f"{path}, row {i}", row) for i, row in enumerate(table.to_list())]
    elif name:
        from tbrm.data.hub import load_hub_dataset

        table = load_hub_dataset(name, subset, split, key="data.name")
        rows = [(f"{name} ({subset or 'default'}, {split}), row {i}", row) for i, row in enumerate(table.to_list())]
    else:
        raise ValueError("trajectories need data.path (a file or folder) or data.name (a hub dataset).")
    records, skipped = [], 0
    for where, row in rows:
        try:
            if isinstance(row, str):
                try:
                    row = json.loads(row)
                except json.JSONDecodeError as err:
                    raise BadTrajectoryError(f"{where}: not a JSON object ({err}). Fix the row, or set "
                                             "data.skip_bad_rows=true to skip such rows.") from err  # fmt: skip
                if not isinstance(row, dict):
                    raise BadTrajectoryError(
                        f"{where}: not a JSON object. Fix the row, or set data.skip_bad_rows=true."
                    )
            records.append(validate_record(row, where))
        except BadTrajectoryError:
            if not skip_bad_rows:
                raise
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d bad trajectory rows of %d", path or name, skipped, len(rows))
    if not records:
        raise ValueError(f"{path or name} holds no usable trajectories.")
    return records, skipped


# ---------------------------------------------------------------------- records -> RolloutBatch
def to_rollout_batch(records: list[dict], tokenizer, device=None):
    """A ``RolloutBatch`` of ``records``: prompts tokenized as generation does (left-padded),
    completions from ``completion_ids`` when given (else the text, plus EOS when ``finished``),
    behaviour log-probs where known (zeros otherwise; ``has_behavior`` says which)."""
    from tbrm.rollout.batch import RolloutBatch

    enc = tokenizer([r["prompt"] for r in records], return_tensors="pt", padding=True)
    completions = []
    for r in records:
        ids = r.get("completion_ids")
        if ids is None:
            ids = tokenizer(r["completion"], add_special_tokens=False)["input_ids"]
            if r.get("finished"):
                ids = [*ids, tokenizer.eos_token_id]
        completions.append(list(ids))
    width = max(max(len(c) for c in completions), 1)
    completion_ids = torch.full((len(records), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(records), width), dtype=torch.long)
    behavior = torch.zeros((len(records), width), dtype=torch.float32)
    for i, (r, ids) in enumerate(zip(records, completions, strict=True)):
        completion_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1
        if r.get("behavior_logprobs") is not None:
            if len(r["behavior_logprobs"]) != len(ids):
                raise BadTrajectoryError(
                    f"a trajectory of prompt {r['prompt'][:40]!r} has {len(r['behavior_logprobs'])} behaviour "
                    f"log-probs for {len(ids)} completion tokens; store completion_ids with the log-probs."
                )
            behavior[i, : len(ids)] = torch.tensor(r["behavior_logprobs"], dtype=torch.float32)
    batch = RolloutBatch(
        prompt_ids=enc["input_ids"],
        prompt_mask=enc["attention_mask"],
        completion_ids=completion_ids,
        completion_mask=mask,
        behavior_log_probs=behavior,
        prompts=[r["prompt"] for r in records],
        answers=[r["answer"] for r in records],
        completions=[r["completion"] for r in records],
        finished=torch.tensor([bool(ids) and ids[-1] == tokenizer.eos_token_id for ids in completions]),
    )
    if device is not None:
        batch = batch.to(device)
    return batch


# ------------------------------------------------------------------------------- generation
def generate_trajectories(
    model,
    tokenizer,
    records: list[dict],
    reward_fn,
    writer: TrajectoryWriter,
    *,
    n: int = 1,
    batch_size: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 48,
    policy: str | None = None,
    engine: str | RolloutEngine = "compact",
) -> tuple[int, float]:
    """Sample ``n`` completions for each prompt record, score them and write them as trajectory
    records, one shard per generate call of ``batch_size // n`` prompts, with a progress bar.
    Returns ``(trajectories written, fraction rewarded)``."""
    from tqdm import tqdm

    from tbrm.rewards.scoring import score
    from tbrm.rollout.engine import as_engine, generate_rollouts

    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or batch_size < n:
        raise ValueError(f"generate.n must be >= 1 and generate.batch_size >= generate.n (got {n}, {batch_size}).")
    per_call = batch_size // n
    engine = as_engine(engine, model, tokenizer)  # a name or an engine: one for every call
    written, rewarded = 0, 0
    with tqdm(total=len(records) * n, desc="generating", unit="completion") as bar:
        for shard, start in enumerate(range(0, len(records), per_call)):
            chunk = records[start : start + per_call]
            prompts, answers = [r["prompt"] for r in chunk], [r["answer"] for r in chunk]
            rollout = generate_rollouts(
                model, tokenizer, prompts, answers, n=n, temperature=temperature, top_p=top_p,
                max_new_tokens=max_new_tokens, engine=engine,
            )  # fmt: skip
            rewards = score(reward_fn, rollout.completions, rollout.answers)
            rows = records_from_rollout(rollout, rewards, eos_token_id=tokenizer.eos_token_id, policy=policy,
                                        temperature=temperature, top_p=top_p)  # fmt: skip
            writer.write(rows, step=shard)
            written += len(rows)
            rewarded += sum(r > 0 for r in rewards)
            bar.update(len(rows))
            bar.set_postfix(accuracy=f"{rewarded / written:.3f}")
    return written, rewarded / max(written, 1)


# ------------------------------------------------------------------------------ the dump callback
class RolloutDump(Callback):
    """Writes every rollout the run generates as trajectory records, one shard per step and rank
    (``<dirpath>/rollouts-step000012-rank0.jsonl``), each written atomically. ``data=trajectories
    data.path=<dirpath>`` trains on them again, as off-policy data.

    Args:
        dirpath: the shards' folder (normally ``<run>/rollouts``).
        format: ``jsonl`` | ``parquet``.
        enabled: False writes nothing (the callback stays in the config, off).
    """

    def __init__(self, dirpath: str, format: str = "jsonl", enabled: bool = True) -> None:  # noqa: A002
        self.writer = TrajectoryWriter(dirpath, format)
        self.enabled = enabled
        self.written = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        generated = pl_module.source.take_generated() if self.enabled else None  # the step's fresh ones
        if generated is None:
            return
        records, step = generated
        self.writer.write(records, step=step, rank=trainer.global_rank)
        self.written += len(records)
