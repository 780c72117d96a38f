"""The warm start of the embedded default: supervised fine-tuning on the task's solutions.

RL sharpens what a model can already sometimes do, so the tiny model first learns the task's
solution format by SFT. The result is cached on disk under a key derived from everything that
determines it (task, architecture, SFT settings), and later runs reuse it. Run it on its own with
``python run.py mode=sft``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tbrm.eval.accuracy import evaluate_accuracy
from tbrm.models.tiny import build_char_tokenizer, build_tiny_model
from tbrm.optim import warmup_cosine
from tbrm.rewards.exact import exact_number_reward

FORMAT_VERSION = 1


def cache_key(task_cfg: dict, architecture: dict, sft: dict) -> str:
    """A short hash of everything that determines the warm-start weights."""
    blob = json.dumps(
        {"v": FORMAT_VERSION, "task": task_cfg, "arch": architecture, "sft": sft}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sft_batch(tokenizer, records: list[dict]) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + completion + EOS`` with labels on the completion tokens only."""
    ids, labels = [], []
    for r in records:
        p = tokenizer(r["prompt"])["input_ids"]
        c = tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
        "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
    }


def supervised_finetune(
    model,
    tokenizer,
    records: list[dict],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int = 20,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """AdamW on the completion tokens, linear warm-up then cosine to 0; returns the loss curve."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup_steps, steps))
    data = sft_batch(tokenizer, records)  # tokenised once; each batch drops its padding columns
    lengths = data["attention_mask"].sum(1)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="warm start (SFT)", unit="step", mininterval=1.0)
    for _ in bar:
        idx = torch.randint(len(records), (batch_size,), generator=gen)
        width = int(lengths[idx].max())
        loss = model(**{k: v[idx, :width] for k, v in data.items()}).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def prepare_warm_start(task, task_cfg: dict, architecture: dict, sft: dict, cache_dir: str | os.PathLike) -> Path:
    """The directory of the warm-started tiny model for ``task``: reused when cached, else built.

    ``sft`` holds ``steps, batch_size, lr, warmup_steps, weight_decay, seed`` and optionally
    ``eval_size``/``eval_samples`` for the headroom report (greedy, sampled, pass@k) written to
    ``warm_start.json`` beside the weights. The directory appears atomically (rename), so an
    interrupted warm start leaves nothing half-written behind.
    """
    sft = dict(sft)
    eval_size, eval_samples = sft.pop("eval_size", 250), sft.pop("eval_samples", 8)
    target = Path(cache_dir) / "warm_start" / cache_key(task_cfg, architecture, sft)
    if (target / "warm_start.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is the same cached or not
        tokenizer = build_char_tokenizer(task.alphabet())
        model = build_tiny_model(tokenizer, seed=sft.get("seed", 0), **architecture)
        losses = supervised_finetune(model, tokenizer, task.splits()["train"], **sft)
        report = {"task": task_cfg, "architecture": architecture, "sft": sft, "final_loss": losses[-1]}
        report["sft_s"] = time.time() - start
        if eval_size:
            records = task.splits()["validation"][:eval_size]
            report["eval"] = evaluate_accuracy(
                model,
                tokenizer,
                records,
                exact_number_reward,
                n_samples=eval_samples,
                k=tuple(k for k in (1, 4, 8) if k <= eval_samples),
            )
            report["eval"]["num_problems"] = len(records)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "warm_start.json").write_text(json.dumps(report, indent=2))
        os.replace(tmp, target)
    except OSError:
        if not (target / "warm_start.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
