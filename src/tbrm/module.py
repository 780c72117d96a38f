"""The LightningModule: one ``training_step`` is one RL iteration, for every algorithm.

prompts -> rollouts (``rollout.engine``: our decode loop, compiled or eager, or HF generate; no grad; or
stored trajectories from a file, or a share drawn from a replay buffer) -> rewards -> what the
objective needs (reference log-probs, critic values; no grad) -> ``objective.prepare``
(advantages, returns) -> for each of ``objective.epochs`` passes and
``objective.num_minibatches`` minibatches: one forward pass of the policy giving
log pi_theta(a_h|s_h) and V_theta(s_1) (and the critic's values) per micro-batch of rows of
similar length (``tbrm.rollout.batching``; rows ``objective.inert_rows`` marks skip the
backward, and the forward too when the rollout recorded their log-probs and entropies) ->
``objective.loss`` -> accumulated gradients -> clipped optimizer step(s). TBRM takes one step per
rollout batch; GRPO and PPO as many as they ask for. The module asks the objective what it needs
(``needs_reference``, ``needs_critic``, ``temperature_scaled``) and never branches on its name.
Validation generates greedy and sampled completions on held-out prompts.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import lightning as L
import torch

from tbrm.data.trajectories import check_stored, records_from_rollout, to_rollout_batch
from tbrm.guards import drop_nonfinite_update
from tbrm.models.critic import ValueModel
from tbrm.models.loading import load_model_and_tokenizer
from tbrm.objectives.common import aggregation_weight, masked_mean, sequence_kl
from tbrm.resume import load_module_state, save_module_state
from tbrm.rewards.scoring import score_counted
from tbrm.rollout.batching import plan_micro_batches
from tbrm.rollout.hf import ENGINES, RolloutBatch, completion_logprobs, completion_values, generate_rollouts
from tbrm.utils import peak_mem_gb, warmup_cosine


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW, its fused kernel where every parameter is a float tensor on CPU or CUDA (one pass
    over the parameters instead of a dozen: 2 ms against 8 ms per step for the 2.6M-parameter
    default on 2 CPU cores); the same update up to float rounding."""
    params = list(params)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


class RLModule(L.LightningModule):
    """Policy (trained), frozen reference (out of the optimizer and the checkpoints), objective.

    Args:
        policy_path: hub name or directory of the initial policy; the reference is loaded from
            the same source, so it is the initial model.
        objective: a ``tbrm.objectives.base.Objective`` (TBRM, GRPO, PPO).
        reward_fn: ``(completions, answers) -> list[float]``.
        rollout: ``n, temperature, top_p, max_new_tokens`` for training rollouts (validation
            samples at the same temperature and top-p).
        optimizer: ``lr, betas, weight_decay, warmup_steps, min_lr_ratio, grad_clip``.
        micro_batch_size, micro_batch_tokens: caps on the completions and padded positions of one
            forward/backward (gradients accumulate; None: no cap); ``split_cost_tokens`` prices
            one more micro-batch in padded positions (``tbrm.rollout.batching``).
        model_options: how the models load (``tbrm.models.loading.load_model_and_tokenizer``:
            ``dtype``, ``attn_implementation``, ``gradient_checkpointing``, ``trust_remote_code``),
            plus ``inference_dtype`` for the frozen reference (default: ``dtype``), which also
            skips gradient checkpointing (it never runs a backward pass).
        replay: a ``tbrm.data.replay.ReplayBuffer`` that supplies ``replay.fraction`` of each
            step's prompts from past rollouts (None: every completion is fresh).
        track_kl_ref: load the reference even when the objective does not need one (beta = 0),
            so that ``train/kl_ref`` is logged (the KL ablation compares it across beta).
        invalid_reward, nonfinite: ``guard.*`` (``tbrm.rewards.scoring``, ``tbrm.guards``).

    Batches of stored trajectories (``data=trajectories``: a ``records`` key) are trained on as
    they are, with their stored rewards: no generation.
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
        micro_batch_tokens: int | None = None,
        split_cost_tokens: float = 256.0,
        model_options: dict | None = None,
        replay=None,
        track_kl_ref: bool = False,
        invalid_reward: str = "stop",
        nonfinite: str = "stop",
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        options = dict(model_options or {})
        ref_dtype = options.pop("inference_dtype", None) or options.get("dtype", "float32")
        ref_options = {**options, "dtype": ref_dtype, "gradient_checkpointing": False}
        self.policy, self.tokenizer = load_model_and_tokenizer(policy_path, **options)
        self.policy.train()  # from_pretrained returns eval mode; generate switches as it needs
        self.objective = objective
        self.reward_fn = reward_fn
        self.rollout_cfg = dict(rollout)
        if self.rollout_cfg.get("engine", "compact") not in ENGINES:  # fail before any model runs
            raise ValueError(f"rollout.engine={self.rollout_cfg['engine']!r} is not one of {ENGINES}.")
        self.optim_cfg = dict(optimizer)
        # the update's forward passes: a prompt shared by rows runs once where that saves more positions
        self.log_probs = functools.partial(completion_logprobs, share_cost_tokens=split_cost_tokens)
        self.batching = {
            "max_rows": micro_batch_size,
            "max_tokens": micro_batch_tokens,
            "split_cost_tokens": split_cost_tokens,
        }
        plan_micro_batches([1], **self.batching)  # a bad cap fails here, not at the first step
        self.completions_seen = 0
        self.generated = 0  # completions sampled during training (0 when training from a file)
        self.last_generated = None  # (rollout, rewards, step) of the newest fresh completions
        self.replay = replay
        self.policy_id = str(policy_path)
        self.tokens_seen = 0
        self.train_time_s = 0.0
        self.last_val_step = -1
        self.invalid_reward, self.nonfinite = invalid_reward, nonfinite
        self.invalid_rewards = 0  # rewards scored 0 under invalid_reward=zero
        self.nonfinite_skipped = 0  # updates dropped under nonfinite=skip
        self.initial_metrics: dict = {}  # validation before training (run.py), kept across a resume
        self.wall_time_before = 0.0  # wall time of the run before the checkpoint it resumed from
        self.started = time.time()
        # PPO's critic: a trained submodule with its own optimizer, checkpointed with the policy.
        self.critic = ValueModel.from_pretrained(policy_path, **options).train() if objective.needs_critic else None
        ref = None
        if objective.needs_reference or track_kl_ref:
            ref, _ = load_model_and_tokenizer(policy_path, **ref_options)
            ref.eval().requires_grad_(False)
        # Kept outside the module tree: never optimised, never checkpointed (reloaded from source).
        self.__dict__["ref_model"] = ref

    # ----------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        if self.ref_model is not None:
            self.ref_model.to(self.device)

    def score(self, rollout: RolloutBatch) -> torch.Tensor:
        """Rewards of a rollout batch as a (batch,) float tensor, checked (``invalid_reward``)."""
        rewards, bad = score_counted(self.reward_fn, rollout.completions, rollout.answers, invalid=self.invalid_reward)
        self.invalid_rewards += bad
        return torch.tensor(rewards, device=self.device)

    def _micro_batches(self, rollout: RolloutBatch, rows: list[int]) -> list[list[int]]:
        """``rows`` of the rollout in micro-batches of similar length (``tbrm.rollout.batching``)."""
        lengths = (rollout.prompt_mask[rows].sum(1) + rollout.completion_mask[rows].sum(1)).tolist()
        return [[rows[i] for i in part] for part in plan_micro_batches(lengths, **self.batching)]

    def _no_grad_pass(self, fn, rollout: RolloutBatch) -> list:
        """Run ``fn(micro_batch)`` under no_grad over micro-batches; pad each output back to the
        rollout's width and put its rows back in order (outputs: tuples of (rows,) or
        (rows, cols) tensors)."""
        width = rollout.completion_ids.shape[1]
        parts, order = [], []
        with torch.no_grad():
            for rows in self._micro_batches(rollout, list(range(len(rollout)))):
                out = fn(rollout.select(rows))
                parts.append([t if t.dim() == 1 else torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in out])
                order += rows
        inverse = torch.argsort(torch.tensor(order, device=self.device))
        return [torch.cat(column)[inverse] for column in zip(*parts, strict=True)]

    def _rollouts(self, batch: dict) -> tuple[RolloutBatch, torch.Tensor]:
        """The step's completions and rewards: stored trajectories as they are, or fresh rollouts
        (for ``1 - replay.fraction`` of the prompts) plus groups drawn from the replay buffer."""
        step = self.global_step
        if "records" in batch:
            check_stored(batch["records"], self.objective, self.rollout_cfg["temperature"], "stored trajectories")
            rewards = torch.tensor([r["reward"] for r in batch["records"]], device=self.device)
            return to_rollout_batch(batch["records"], self.tokenizer, self.device), rewards
        prompts, answers = batch["prompt"], batch["answer"]
        drawn = []
        if self.replay is not None:
            drawn = self.replay.sample(round(len(prompts) * self.replay.fraction), step)
            keep = len(prompts) - len(drawn)
            prompts, answers = prompts[:keep], answers[:keep]
        rollout = generate_rollouts(self.policy, self.tokenizer, prompts, answers, **self.rollout_cfg)
        rewards = self.score(rollout)
        self.generated += len(rollout)
        self.last_generated = (rollout, rewards, step)
        if self.replay is None:
            return rollout, rewards
        fresh = records_from_rollout(rollout, rewards.tolist(), **self._record_meta(step))
        n = self.rollout_cfg.get("n", 1)
        self.replay.add([fresh[i : i + n] for i in range(0, len(fresh), n)], step)
        if not drawn:
            return rollout, rewards
        old = [r for _, group in drawn for r in group]
        check_stored(old, self.objective, self.rollout_cfg["temperature"], "replayed trajectories")
        self._replay_stats = {
            "replay/size": float(len(self.replay)),
            "replay/drawn": float(len(old)),
            "replay/age_mean": sum(step - s for s, g in drawn for _ in g) / len(old),
        }
        records = fresh + old
        rewards = torch.tensor([r["reward"] for r in records], device=self.device)
        return to_rollout_batch(records, self.tokenizer, self.device), rewards

    def _record_meta(self, step: int) -> dict:
        cfg = self.rollout_cfg
        return {
            "eos_token_id": self.tokenizer.eos_token_id,
            "policy": self.policy_id,
            "step": step,
            "temperature": cfg.get("temperature"),
            "top_p": cfg.get("top_p"),
        }

    def training_step(self, batch: dict, batch_idx: int) -> None:
        t0 = time.perf_counter()
        self._replay_stats = {}
        rollout, rewards = self._rollouts(batch)
        t_rollout = time.perf_counter() - t0

        objective = self.objective
        size = len(rollout)
        temperature = self.rollout_cfg["temperature"] if objective.temperature_scaled else 1.0
        exp = {"rewards": rewards, "mask": rollout.completion_mask, "behavior_log_probs": rollout.behavior_log_probs}
        t1 = time.perf_counter()
        if self.ref_model is not None:
            ref_out = self._no_grad_pass(
                lambda mb: self.log_probs(self.ref_model, mb, temperature=temperature)[:2], rollout
            )
            exp["ref_log_probs"], exp["ref_initial_value"] = ref_out
        t_ref = time.perf_counter() - t1
        t2 = time.perf_counter()
        if self.critic is not None:
            exp["old_values"] = self._no_grad_pass(lambda mb: (completion_values(self.critic, mb),), rollout)[0]
        sums = {key: float(value) for key, value in objective.prepare(exp).items()}
        inert = objective.inert_rows(exp)  # rows whose loss and gradient are exactly zero: no backward
        if inert is not None:
            sums["train/inert_frac"] = inert.float().mean().item()
            inert = inert.tolist()

        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        params = [list(m.parameters()) for m in (self.policy, self.critic) if m is not None]
        clip = self.optim_cfg["grad_clip"]
        updates = objective.epochs * objective.num_minibatches
        # one optimizer step per rollout: the policy stays the sampler until the update ends
        stats = rollout.stats
        recorded = stats is not None and updates == 1 and stats.temperature == temperature
        done = 0
        for _ in range(objective.epochs):
            order = torch.randperm(size).tolist() if updates > 1 else list(range(size))
            for rows in (order[i :: objective.num_minibatches] for i in range(objective.num_minibatches)):
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                whole_mask = rollout.completion_mask[rows]
                active = rows if inert is None else [r for r in rows if not inert[r]]
                idle = [] if inert is None else [r for r in rows if inert[r]]
                loss = 0.0  # this minibatch's loss: a non-finite one never reaches the weights
                # Inert rows only feed the logged metrics (no backward); while the policy is still
                # the one that sampled them, from what the rollout recorded (no forward either).
                for part, backward in ((active, True), (idle, False)):
                    for sub in self._micro_batches(rollout, part):
                        with torch.set_grad_enabled(backward):
                            metrics, weight = self._micro_step(
                                rollout, sub, exp, whole_mask, temperature, recorded=recorded and not backward
                            )
                        loss += float(metrics["train/loss"]) * weight
                        for key, value_ in metrics.items():
                            sums[key] = sums.get(key, 0.0) + float(value_) * weight / updates
                if not active:  # an all-zero gradient still steps AdamW (its moments decay)
                    for group in params:
                        for p in group:
                            p.grad = torch.zeros_like(p) if p.grad is None else p.grad
                done += 1
                norms = [torch.nn.utils.clip_grad_norm_(group, clip) for group in params]
                self.nonfinite_skipped += drop_nonfinite_update(
                    loss, norms, params, mode=self.nonfinite, step=self.global_step
                )
                for i, (opt, norm) in enumerate(zip(opts, norms, strict=True)):
                    key = "train/grad_norm" if i == 0 else "train/critic_grad_norm"
                    sums[key] = sums.get(key, 0.0) + float(norm) / updates
                    # Only the policy's last step of the iteration goes through Lightning, so that
                    # trainer.global_step counts RL iterations, not optimizer steps.
                    (opt if i == 0 and done == updates else opt.optimizer).step()
        for sched in self._schedulers():
            sched.step()
        t_update = time.perf_counter() - t2
        step_s = time.perf_counter() - t0

        tokens = int(rollout.prompt_mask.sum() + rollout.completion_mask.sum())
        self.completions_seen += size
        self.tokens_seen += tokens
        self.train_time_s += step_s
        sums.update(
            {
                "train/reward_mean": rewards.mean().item(),
                "train/accuracy": (rewards > 0).float().mean().item(),
                "train/response_length": rollout.completion_mask.sum(1).float().mean().item(),
                "train/lr": self._schedulers()[0].get_last_lr()[0],
                "train/completions": float(self.completions_seen),
                "train/generated": float(self.generated),
                "train/invalid_rewards": float(self.invalid_rewards),
                "train/nonfinite_skipped": float(self.nonfinite_skipped),
                "train/tokens": float(self.tokens_seen),
                "perf/rollout_s": t_rollout,
                "perf/ref_s": t_ref,
                "perf/update_s": t_update,
                "perf/step_s": step_s,
                "perf/elapsed_s": self.train_time_s,
                "perf/tokens_per_s": tokens / step_s,
                "perf/peak_mem_gb": peak_mem_gb(self.device),
            }
        )
        sums.update(self._replay_stats)
        self.log_dict(sums, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/acc", sums["train/accuracy"], prog_bar=True, logger=False, batch_size=size)

    def _micro_step(self, rollout, sub, exp, whole_mask, temperature, recorded=False) -> tuple[dict, float]:
        """Forward and (with grad enabled) backward of the micro-batch ``sub`` (rows of the
        rollout), its loss scaled by its share of the (mini-)batch; returns its metrics and that
        share. ``recorded`` (no grad, policy unchanged since the rollout): the policy's log-probs,
        entropies and V(s_1) come from ``rollout.stats`` instead of a forward pass."""
        objective = self.objective
        mb = rollout.select(sub)
        idx = torch.tensor(sub, device=self.device)
        keep = mb.completion_ids.shape[1]
        mexp = {k: v[idx] if v.dim() == 1 else v[idx, :keep] for k, v in exp.items()}
        if recorded:
            mexp["log_probs"], mexp["initial_value"] = mb.stats.log_probs, mb.stats.initial_value
            mexp["entropy"] = mb.stats.entropy
        else:
            mexp["log_probs"], mexp["initial_value"], mexp["entropy"] = self.log_probs(
                self.policy, mb, with_entropy=True, entropy_grad=objective.needs_entropy_grad, temperature=temperature
            )
        if self.critic is not None:
            mexp["values"] = completion_values(self.critic, mb)
        loss, metrics = objective.loss(mexp)
        weight = aggregation_weight(objective.loss_agg_mode, mb.completion_mask, whole_mask)
        if torch.is_grad_enabled():
            self.manual_backward(loss * weight)
        metrics = {"train/loss": loss.detach(), **metrics}
        metrics["train/entropy"] = masked_mean(mexp["entropy"].detach(), mb.completion_mask)
        if "ref_log_probs" in mexp:
            metrics["train/kl_ref"] = sequence_kl(mexp["log_probs"].detach(), mexp["ref_log_probs"], mb.completion_mask)
            metrics["train/kl_ref"] = metrics["train/kl_ref"].mean()
        return metrics, weight

    def _schedulers(self) -> list:
        scheds = self.lr_schedulers()
        return scheds if isinstance(scheds, list) else [scheds]

    def configure_optimizers(self):
        cfg = self.optim_cfg
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else 1000
        lam = warmup_cosine(cfg["warmup_steps"], total, cfg.get("min_lr_ratio", 0.0))
        groups = [(self.policy, cfg["lr"])]
        if self.critic is not None:
            groups.append((self.critic, self.objective.critic_lr))
        betas, decay = tuple(cfg["betas"]), cfg["weight_decay"]
        opts = [adamw(m.parameters(), lr=lr, betas=betas, weight_decay=decay) for m, lr in groups]
        scheds = [torch.optim.lr_scheduler.LambdaLR(opt, lam) for opt in opts]
        if len(opts) == 1:
            return {"optimizer": opts[0], "lr_scheduler": scheds[0]}
        return opts, scheds

    # ---------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        cfg = self.rollout_cfg
        size = len(batch["prompt"])
        common = dict(max_new_tokens=cfg["max_new_tokens"], engine=cfg.get("engine", "compact"))
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
    def on_save_checkpoint(self, checkpoint: dict) -> None:  # what an exact resume needs (tbrm.resume)
        for logger in self.trainer.loggers:  # what was logged up to here is on disk with the checkpoint
            logger.save()
        save_module_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_module_state(self, checkpoint)

    @property
    def wall_time_s(self) -> float:
        """Wall time of the whole run: before the checkpoint it resumed from, and in this process."""
        return self.wall_time_before + time.time() - self.started
