"""The LightningModule: one ``training_step`` is one RL iteration.

prompts -> rollouts (HF generate, no grad) -> rewards -> reference log-probs (no grad) -> one
forward pass of the policy giving log pi_theta(a_h|s_h) and V_theta(s_1) -> objective -> one
optimizer step. The objective decides what it needs (``needs_reference``); nothing here branches
on the algorithm's name. Validation generates greedy and sampled completions on held-out prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import lightning as L
import torch

from tbrm.models.loading import load_model_and_tokenizer
from tbrm.objectives.common import masked_mean, sequence_kl
from tbrm.rollout.hf import RolloutBatch, completion_logprobs, generate_rollouts
from tbrm.utils import peak_mem_gb, warmup_cosine


class RLModule(L.LightningModule):
    """Policy (trained), frozen reference (out of the optimizer and the checkpoints), objective.

    Args:
        policy_path: hub name or directory of the initial policy; the reference is loaded from
            the same source, so it is the initial model.
        objective: e.g. ``tbrm.objectives.TBRM``; exposes ``name``, ``needs_reference`` and ``loss``.
        reward_fn: ``(completions, answers) -> list[float]``.
        rollout: ``n, temperature, top_p, max_new_tokens`` for training rollouts (validation
            samples at the same temperature and top-p).
        optimizer: ``lr, betas, weight_decay, warmup_steps, min_lr_ratio, grad_clip``.
        micro_batch_size: completions per forward/backward (gradients accumulate); None: all.
        dtype: the models' dtype (``float32`` on CPU, ``bfloat16`` on GPU).
    """

    def __init__(
        self,
        policy_path: str,
        objective,
        reward_fn: Callable[[list[str], list[str]], list[float]],
        *,
        rollout: dict,
        optimizer: dict,
        micro_batch_size: int | None = None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.tokenizer = load_model_and_tokenizer(policy_path, dtype=dtype)
        self.policy.train()  # from_pretrained returns eval mode; generate switches as it needs
        self.objective = objective
        self.reward_fn = reward_fn
        self.rollout_cfg = dict(rollout)
        self.optim_cfg = dict(optimizer)
        self.micro_batch_size = micro_batch_size
        self.completions_seen = 0
        self.last_val_step = -1
        ref = None
        if objective.needs_reference:
            ref, _ = load_model_and_tokenizer(policy_path, dtype=dtype)
            ref.eval().requires_grad_(False)
        # Kept outside the module tree: never optimised, never checkpointed (reloaded from source).
        self.__dict__["ref_model"] = ref

    # ----------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        if self.ref_model is not None:
            self.ref_model.to(self.device)

    def score(self, rollout: RolloutBatch) -> torch.Tensor:
        """Rewards of a rollout batch as a (batch,) float tensor, with a clear error on failure."""
        try:
            rewards = self.reward_fn(rollout.completions, rollout.answers)
        except Exception as err:  # a user's verifier: say which one failed and on what
            raise RuntimeError(
                f"reward function {getattr(self.reward_fn, '__name__', self.reward_fn)!r} raised "
                f"{type(err).__name__}: {err} (first completion: {rollout.completions[:1]!r}). "
                "A reward function must return one float per completion and never raise."
            ) from err
        if len(rewards) != len(rollout):
            raise ValueError(f"reward function returned {len(rewards)} rewards for {len(rollout)} completions.")
        return torch.tensor([float(r) for r in rewards], device=self.device)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        t0 = time.perf_counter()
        rollout = generate_rollouts(self.policy, self.tokenizer, batch["prompt"], batch["answer"], **self.rollout_cfg)
        rewards = self.score(rollout)
        t_rollout = time.perf_counter() - t0

        opt, sched = self.optimizers(), self.lr_schedulers()
        opt.zero_grad(set_to_none=True)
        size = len(rollout)
        micro = self.micro_batch_size or size
        sums: dict[str, float] = {}
        t_ref = 0.0
        t1 = time.perf_counter()
        for start in range(0, size, micro):
            index = slice(start, min(start + micro, size))
            mb = rollout.select(index)
            weight = len(mb) / size
            tr = time.perf_counter()
            ref_log_probs = ref_value = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref_log_probs, ref_value, _ = completion_logprobs(self.ref_model, mb)
            t_ref += time.perf_counter() - tr
            log_probs, value, entropy = completion_logprobs(self.policy, mb, with_entropy=True)
            loss, metrics = self.objective.loss(
                log_probs, ref_log_probs, value, ref_value, rewards[index], mb.completion_mask
            )
            self.manual_backward(loss * weight)
            metrics = {"train/loss": loss.detach(), **metrics}
            metrics["train/entropy"] = masked_mean(entropy, mb.completion_mask)
            if ref_log_probs is not None:
                metrics["train/kl_ref"] = sequence_kl(log_probs.detach(), ref_log_probs, mb.completion_mask).mean()
            for key, value_ in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value_) * weight
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.optim_cfg["grad_clip"])
        opt.step()
        sched.step()
        t_update = time.perf_counter() - t1 - t_ref
        step_s = time.perf_counter() - t0

        self.completions_seen += size
        tokens = int(rollout.prompt_mask.sum() + rollout.completion_mask.sum())
        sums.update(
            {
                "train/reward_mean": rewards.mean().item(),
                "train/accuracy": (rewards > 0).float().mean().item(),
                "train/response_length": rollout.completion_mask.sum(1).float().mean().item(),
                "train/grad_norm": float(grad_norm),
                "train/lr": sched.get_last_lr()[0],
                "train/completions": float(self.completions_seen),
                "perf/rollout_s": t_rollout,
                "perf/ref_s": t_ref,
                "perf/update_s": t_update,
                "perf/step_s": step_s,
                "perf/tokens_per_s": tokens / step_s,
                "perf/peak_mem_gb": peak_mem_gb(self.device),
            }
        )
        self.log_dict(sums, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/acc", sums["train/accuracy"], prog_bar=True, logger=False, batch_size=size)

    def configure_optimizers(self):
        cfg = self.optim_cfg
        opt = torch.optim.AdamW(
            self.policy.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"]
        )
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else 1000
        lam = warmup_cosine(cfg["warmup_steps"], total, cfg.get("min_lr_ratio", 0.0))
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lam)}

    # ---------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        cfg = self.rollout_cfg
        size = len(batch["prompt"])
        common = dict(max_new_tokens=cfg["max_new_tokens"])
        greedy = generate_rollouts(self.policy, self.tokenizer, batch["prompt"], batch["answer"], greedy=True, **common)
        sampled = generate_rollouts(
            self.policy,
            self.tokenizer,
            batch["prompt"],
            batch["answer"],
            temperature=cfg["temperature"],
            top_p=cfg["top_p"],
            **common,
        )
        metrics = {
            "val/accuracy": (self.score(greedy) > 0).float().mean(),
            "val/accuracy_sampled": (self.score(sampled) > 0).float().mean(),
            "val/response_length": greedy.completion_mask.sum(1).float().mean(),
        }
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.last_val_step = self.global_step

    # --------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["completions_seen"] = self.completions_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.completions_seen = checkpoint.get("completions_seen", 0)
