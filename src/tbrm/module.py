"""The LightningModule: one ``training_step`` is one RL iteration, for every algorithm.

    collect    the step's completions and rewards (``tbrm.rollout.source.StepSource``: fresh
               rollouts from ``rollout.engine``, stored trajectories, or fresh + replayed), scored
               by the reward function (``tbrm.rewards.scoring``)
    no grad    the frozen reference's log-probs and V_ref(s_1), the critic's values
               (``tbrm.update.Update.experience``, ``critic_pass``)
    prepare    batch-level quantities: advantages, returns (``objective.prepare``)
    update     ``objective.epochs x num_minibatches`` optimizer steps over micro-batches
               (``tbrm.update.Update.run``: the same loop for every objective)
    log        ``train/``, ``perf/`` and the objective's own metrics (docs/metrics.md)

The module asks the objective what it needs (``needs_reference``, ``needs_critic``,
``temperature_scaled``) and never branches on its name. Validation samples greedy and tempered
completions on held-out prompts with the same engine.

Under data parallelism (``trainer=ddp``, ``trainer=fsdp``) every rank runs this step on its shard
of the step's batch with its own engine; the update averages the gradients once per optimizer step
(``tbrm.update``; sharded models are gathered for the step, ``tbrm.sharding``), and the logged
metrics and the validation accuracy are over all ranks (``tbrm.distributed.reduce_metrics``;
docs/metrics.md says which are means, sums and maxima).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextlib import contextmanager

import lightning as L
import torch

from tbrm.distributed import all_sum, gather_objects, reduce_metrics, weights_checksum
from tbrm.io import atomic_dir
from tbrm.models.critic import ValueModel
from tbrm.models.forward import completion_logprobs
from tbrm.models.loading import load_model_and_tokenizer
from tbrm.optim import adamw, warmup_cosine_schedule
from tbrm.resume import load_module_state, save_module_state
from tbrm.rewards.scoring import score_counted
from tbrm.rollout.batch import RolloutBatch
from tbrm.rollout.engine import make_engine
from tbrm.rollout.source import StepSource
from tbrm.sharding import GradientSync, full_state_dict, gather, gathered, is_sharded, release, shard
from tbrm.update import Update
from tbrm.utils import peak_mem_gb


class RLModule(L.LightningModule):
    """Policy (trained), frozen reference (out of the optimizer and the checkpoints), objective.

    Args:
        policy_path: hub name or directory of the initial policy; the reference is loaded from
            the same source, so it is the initial model.
        objective: a ``tbrm.objectives.base.Objective``.
        reward_fn: ``(completions, answers) -> list[float]``.
        rollout: ``n, temperature, top_p, max_new_tokens, engine`` of the training rollouts
            (validation samples at the same temperature and top-p), ``vllm`` (the vLLM engine's
            settings), ``is_correction``, ``is_threshold`` (``tbrm.update.Update``).
        optimizer: ``(params, lr=...) -> torch.optim.Optimizer`` (``conf/optimizer/``, a partial
            with its lr; None: AdamW at 1e-4); PPO's critic gets ``lr=objective.critic_lr``.
        scheduler: ``(optimizer, total_steps) -> LR scheduler`` (``conf/scheduler/``).
        update: ``grad_clip``, ``micro_batch_size``, ``micro_batch_tokens``, ``split_cost_tokens``
            (``conf/update/``, ``tbrm.update``).
        model_options: how the models load (``tbrm.models.loading.load_model_and_tokenizer``),
            plus ``inference_dtype`` for the frozen reference (default: ``dtype``), which also skips
            gradient checkpointing (it never runs a backward pass).
        replay: a ``tbrm.data.replay.ReplayBuffer`` (None: every completion is fresh).
        track_kl_ref: load the reference even when the objective does not need one (beta = 0),
            so that ``train/kl_ref`` is logged.
        invalid_reward, nonfinite: ``guard.*`` (``tbrm.rewards.scoring``, ``tbrm.guards``).
    """

    def __init__(
        self,
        policy_path: str,
        objective,
        reward_fn: Callable[[list[str], list[str]], list[float]],
        *,
        rollout: dict,
        optimizer: Callable | None = None,
        scheduler: Callable = warmup_cosine_schedule,
        update: dict | None = None,
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
        self.rollout_cfg = dict(rollout)
        engine_name = self.rollout_cfg.pop("engine", "compact")
        engine_options = self.rollout_cfg.pop("vllm", None)
        correction = {k: self.rollout_cfg.pop(k) for k in ("is_correction", "is_threshold") if k in self.rollout_cfg}
        self.policy, self.tokenizer = load_model_and_tokenizer(policy_path, **options)
        self.policy.train()  # from_pretrained returns eval mode; the engines switch as they need
        self.objective, self.reward_fn = objective, reward_fn
        self.make_optimizer, self.make_scheduler = optimizer, scheduler
        self.engine = make_engine(engine_name, self.policy, self.tokenizer, engine_options)  # a bad name fails here
        self.source = StepSource(self.engine, self.tokenizer, self.score, objective, self.rollout_cfg, replay,
                                 str(policy_path))  # fmt: skip
        # PPO's critic: a trained submodule with its own optimizer, checkpointed with the policy.
        self.critic = ValueModel.from_pretrained(policy_path, **options).train() if objective.needs_critic else None
        cfg = {"grad_clip": 1.0, "split_cost_tokens": 256.0, **(update or {})}
        batching = {"max_rows": cfg.get("micro_batch_size"), "max_tokens": cfg.get("micro_batch_tokens"),
                    "split_cost_tokens": cfg["split_cost_tokens"]}  # fmt: skip
        # the forward passes: a prompt shared by rows runs once where that saves more positions
        forward = functools.partial(completion_logprobs, share_cost_tokens=cfg["split_cost_tokens"])
        self.update = Update(objective, self.policy, self.critic, forward=forward, batching=batching,
                             grad_clip=cfg["grad_clip"], nonfinite=nonfinite,
                             temperature=self.rollout_cfg["temperature"], **correction)  # fmt: skip
        ref = None
        if objective.needs_reference or track_kl_ref:
            ref_options = {**options, "dtype": ref_dtype, "gradient_checkpointing": False}
            ref, _ = load_model_and_tokenizer(policy_path, **ref_options)
            ref.eval().requires_grad_(False)
        # Kept outside the module tree: never optimised, never checkpointed (reloaded from source).
        self.__dict__["ref_model"] = ref
        self.invalid_reward = invalid_reward
        self.invalid_rewards = 0  # rewards scored 0 under invalid_reward=zero
        self.completions_seen, self.tokens_seen, self.train_time_s = 0, 0, 0.0
        self.last_val_step = -1
        self.initial_metrics: dict = {}  # validation before training (run.py), kept across a resume
        self.data_parallel: dict = {}  # world size, each rank's policy checksum and parameters (on_train_end)
        self.wall_time_before = 0.0  # wall time of the run before the checkpoint it resumed from
        self.started = time.time()

    # what the checkpoint keeps (tbrm.resume) and the tests read lives with its owner
    replay = property(lambda self: self.source.replay)
    generated = property(lambda self: self.source.generated, lambda self, v: setattr(self.source, "generated", v))
    nonfinite_skipped = property(
        lambda self: self.update.nonfinite_skipped, lambda self, v: setattr(self.update, "nonfinite_skipped", v)
    )

    def on_fit_start(self) -> None:
        if self.ref_model is not None:
            self.ref_model.to(self.device)

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (``trainer=fsdp``): shard the policy and the critic over the
        data-parallel ranks (``tbrm.sharding``). Lightning calls it before the optimizers exist."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        if not isinstance(self.trainer.strategy, ModelParallelStrategy) or is_sharded(self.policy):
            return
        mesh = self.trainer.strategy.device_mesh["data_parallel"]
        for model in (self.policy, self.critic):
            if model is not None:
                shard(model, mesh)
        self.update.sync = GradientSync(self.policy, self.critic)

    def on_train_end(self) -> None:
        """Every rank must end with the same policy (one all-reduced update per step from the same
        start); a difference means the gradients were not synchronised, and the run fails."""
        held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in self.policy.parameters())
        checksums, params = zip(*gather_objects((weights_checksum(self.policy), held)), strict=True)
        self.data_parallel = {
            "world_size": self.trainer.world_size,
            "policy_checksums": list(checksums),
            "policy_params_per_rank": list(params),
        }  # each rank's parameters: all of the policy's unless it is sharded
        if len(set(checksums)) > 1:
            raise RuntimeError(f"the data-parallel ranks' policies differ after training (weight checksums "
                               f"{list(checksums)}): their gradients were not averaged.")  # fmt: skip

    def save_policy(self, path) -> None:
        """The policy and tokenizer with ``save_pretrained``, atomically; called on every rank (a
        sharded policy is gathered to rank zero), rank zero writes."""
        weights = full_state_dict(self.policy)  # None unless sharded: save_pretrained reads the model's own
        if not self.trainer.is_global_zero:
            return
        with atomic_dir(path) as out:
            self.policy.save_pretrained(out, state_dict=weights)
            self.tokenizer.save_pretrained(out)

    def score(self, rollout: RolloutBatch) -> torch.Tensor:
        """Rewards of a rollout batch as a (batch,) float tensor, checked (``invalid_reward``)."""
        rewards, bad = score_counted(self.reward_fn, rollout.completions, rollout.answers, invalid=self.invalid_reward)
        self.invalid_rewards += bad
        return torch.tensor(rewards, device=self.device)

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> None:
        ddp = self.trainer.strategy.model
        if isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
            # DDP's hooks would all-reduce at every micro-batch's backward (and hang when the ranks run
            # different numbers of them): the update averages once per optimizer step instead. Lightning
            # turns them back on after each step, so this is said at every step.
            ddp.require_backward_grad_sync = False
        with gathered(self.policy, self.critic):  # sharded: the weights whole for the step's forwards
            self.rl_step(batch)

    def rl_step(self, batch: dict) -> None:
        timer = Timer()
        with timer("rollout"):
            rollout, rewards = self.source.collect(batch, self.global_step, self.device)
        with timer("ref"):
            exp = self.update.experience(rollout, rewards, self.ref_model, fresh=self.source.fresh)
        with timer("update"):
            self.update.critic_pass(rollout, exp)
            metrics = {key: float(value) for key, value in self.objective.prepare(exp).items()}
            opts = self.optimizers()
            opts = opts if isinstance(opts, list) else [opts]
            metrics |= self.update.run(
                rollout, exp, [opt.optimizer for opt in opts], step=self.global_step,
                backward=self.manual_backward, counted_step=opts[0].step,
            )  # fmt: skip
            for sched in self._schedulers():
                sched.step()
        self.engine.on_weights_updated()  # an engine with its own weights syncs before the next rollout
        self.log_step(rollout, rewards, metrics, timer.seconds)

    def log_step(self, rollout: RolloutBatch, rewards: torch.Tensor, metrics: dict, seconds: dict) -> None:
        size, step_s = len(rollout), sum(seconds.values())
        tokens = int(rollout.prompt_mask.sum() + rollout.completion_mask.sum())
        self.completions_seen += size
        self.tokens_seen += tokens
        self.train_time_s += step_s
        metrics |= {
            "train/reward_mean": rewards.mean().item(),
            "train/accuracy": (rewards > 0).float().mean().item(),
            "train/response_length": rollout.completion_mask.sum(1).float().mean().item(),
            "train/lr": self._schedulers()[0].get_last_lr()[0],
            "train/completions": float(self.completions_seen),
            "train/generated": float(self.generated),
            "train/invalid_rewards": float(self.invalid_rewards),
            "train/nonfinite_skipped": float(self.nonfinite_skipped),
            "train/tokens": float(self.tokens_seen),
            **{f"perf/{phase}_s": s for phase, s in seconds.items()},
            "perf/step_s": step_s,
            "perf/elapsed_s": self.train_time_s,
            "perf/tokens_per_s": tokens / step_s,
            "perf/peak_mem_gb": peak_mem_gb(self.device),
            **self.source.stats,
        }
        metrics = reduce_metrics(metrics, summed=SUMMED, maxed=MAXED)  # over all ranks; one rank logs them
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/acc", metrics["train/accuracy"], prog_bar=True, logger=False, batch_size=size)

    def _schedulers(self) -> list:
        scheds = self.lr_schedulers()
        return scheds if isinstance(scheds, list) else [scheds]

    def configure_optimizers(self):
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else 1000
        make = self.make_optimizer or functools.partial(adamw, lr=1e-4)
        opts = [make(self.policy.parameters())]
        if self.critic is not None:
            opts.append(make(self.critic.parameters(), lr=self.objective.critic_lr))
        scheds = [self.make_scheduler(opt, total_steps=total) for opt in opts]
        if len(opts) == 1:
            return {"optimizer": opts[0], "lr_scheduler": scheds[0]}
        return opts, scheds

    # ---------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_counts = [0.0, 0.0, 0.0, 0.0]  # greedy correct, sampled correct, greedy tokens, prompts
        gather(self.policy)  # sharded: whole for the validation (nothing to do unsharded)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        cfg, size = self.rollout_cfg, len(batch["prompt"])
        prompts, answers, max_new = batch["prompt"], batch["answer"], cfg["max_new_tokens"]
        greedy = self.engine.generate(prompts, answers, greedy=True, max_new_tokens=max_new)
        sampled = self.engine.generate(
            prompts, answers, temperature=cfg["temperature"], top_p=cfg["top_p"], max_new_tokens=max_new
        )
        counts = ((self.score(greedy) > 0).sum(), (self.score(sampled) > 0).sum(), greedy.completion_mask.sum(), size)
        self._val_counts = [total + float(c) for total, c in zip(self._val_counts, counts, strict=True)]

    def on_validation_epoch_end(self) -> None:
        release(self.policy)
        greedy, sampled, tokens, prompts = (float(c) for c in all_sum(*self._val_counts))  # every rank's prompts
        if prompts:
            metrics = {"val/accuracy": greedy / prompts, "val/accuracy_sampled": sampled / prompts,
                       "val/response_length": tokens / prompts}  # fmt: skip
            self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)  # equal on every rank already
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


# logged train/ and perf/ keys summed (counts, throughput) or maximised (memory) over the ranks;
# every other key is the mean over the ranks (docs/metrics.md)
SUMMED = ("train/completions", "train/generated", "train/invalid_rewards", "train/tokens", "perf/tokens_per_s")
MAXED = ("perf/peak_mem_gb", "perf/step_s")


class Timer:
    """Seconds per named phase of a step (``perf/<phase>_s``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
