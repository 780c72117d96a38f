"""The update of one RL step, the same for every objective: passes x minibatches x micro-batches.

Given a rollout batch and its experience (rewards, masks, behaviour and reference log-probs, the
critic's values, and what ``objective.prepare`` added), ``Update.run`` takes
``objective.epochs x objective.num_minibatches`` optimizer steps (TBRM: one; GRPO and PPO as
many as they ask for). Each step:

1. plans its minibatch's rows into micro-batches of similar length
   (``tbrm.rollout.batching.plan_micro_batches``); rows ``objective.inert_rows`` marks (their
   loss term and gradient are exactly zero) form micro-batches without a backward pass, and
   without a forward pass too while the policy is still the one that sampled them (their logged
   metrics come from what the rollout recorded);
2. runs each micro-batch's forward pass (``tbrm.models.forward.completion_logprobs``, the
   critic's values) and ``objective.loss``, and back-propagates the loss scaled by the
   micro-batch's share of the minibatch (``aggregation_weight`` of each term's aggregation), so
   the accumulated gradient is the whole minibatch's whatever the split;
3. averages the gradients over the data-parallel ranks (one all-reduce per model:
   ``tbrm.distributed.average_gradients``; the ranks may run different numbers of micro-batches,
   so DDP's per-backward hooks are off; sharded models reduce-scatter in exactly one backward per
   optimizer step on every rank, ``tbrm.sharding.GradientSync``), clips the gradient norm of the
   policy and of the critic, drops a non-finite update (``tbrm.guards``), and steps each optimizer.

Under data parallelism each micro-batch's share is of the whole data-parallel minibatch (its
token and row counts summed over the ranks), so ``token-mean`` losses are exact over all ranks.

Nothing here knows Lightning: the module passes its ``manual_backward`` and the step that
Lightning counts (so ``trainer.global_step`` counts RL steps, not optimizer steps).

The train/inference mismatch, every step: ``rollout/logprob_abs_diff`` is the mean over the fresh
completion tokens of |behaviour log-prob recorded by the engine - the trainer's log-prob at the
sampling temperature| under the weights that sampled them. It comes from the first optimizer
step's forward passes (no extra pass) when the update's log-probs are at the sampling temperature;
from a no-grad pass of its own otherwise, and under ``rollout.is_correction``, which also needs the
trainer's log-probs of every row before the update (``experience``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tbrm.distributed import all_sum, average_gradients, world_size
from tbrm.guards import drop_nonfinite_update
from tbrm.models.forward import completion_values
from tbrm.objectives.common import aggregation_weight, masked_mean, sequence_kl, truncated_is_weights
from tbrm.rollout.batch import RolloutBatch
from tbrm.rollout.batching import plan_micro_batches


def _full(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (a sharded model's is a replicated DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


class Update:
    """Args:
    objective: a ``tbrm.objectives.base.Objective``.
    policy, critic: the trained models (``critic`` None without one).
    forward: ``(model, micro_batch, *, with_entropy, entropy_grad, temperature) ->
        (log_probs, initial_value, entropy)`` (``completion_logprobs``).
    batching: ``max_rows``, ``max_tokens``, ``split_cost_tokens`` of ``plan_micro_batches``.
    grad_clip: the maximum gradient norm of each model.
    nonfinite: ``stop`` | ``skip`` (``guard.nonfinite``).
    temperature: the sampling temperature (the update's log-probs use it when
        ``objective.temperature_scaled``).
    is_correction, is_threshold: ``rollout.is_correction`` (null | token | sequence) and its cap
        (``tbrm.objectives.common.truncated_is_weights``); needs an objective with ratios.
    """

    def __init__(self, objective, policy, critic=None, *, forward: Callable, batching: dict | None = None,
                 grad_clip: float = 1.0, nonfinite: str = "stop", temperature: float = 1.0,
                 is_correction: str | None = None, is_threshold: float = 2.0) -> None:  # fmt: skip
        self.objective, self.policy, self.critic, self.forward = objective, policy, critic, forward
        self.batching = dict(batching or {})
        plan_micro_batches([1], **self.batching)  # a bad cap fails here, not at the first step
        self.grad_clip, self.nonfinite = grad_clip, nonfinite
        self.sampling_temperature = temperature
        self.temperature = temperature if objective.temperature_scaled else 1.0
        if is_correction is not None and not objective.needs_behavior_log_probs:
            raise ValueError(f"rollout.is_correction={is_correction} corrects the ratio of GRPO and PPO; "
                             f"{objective.name} has none: set rollout.is_correction=null.")  # fmt: skip
        self.is_correction, self.is_threshold = is_correction, is_threshold
        self.nonfinite_skipped = 0  # updates dropped under nonfinite=skip
        self.rollout_metrics: dict[str, float] = {}  # this step's rollout/ metrics
        self._mismatch: list[float] | None = None  # [sum |diff|, tokens] over the first step's fresh rows
        self.fresh = 0  # the leading rows of this step's rollout sampled now
        self.sync = None  # a tbrm.sharding.GradientSync when the models are sharded (set by the module)

    # ------------------------------------------------------------------ micro-batches, no-grad passes
    def micro_batches(self, rollout: RolloutBatch, rows: list[int]) -> list[list[int]]:
        """``rows`` of the rollout in micro-batches of similar length."""
        return [[rows[i] for i in part] for part in plan_micro_batches(rollout.lengths(rows), **self.batching)]

    def no_grad_pass(self, fn, rollout: RolloutBatch) -> list[torch.Tensor]:
        """``fn(micro_batch)`` under no_grad over micro-batches of the whole rollout; each output
        ((rows,) or (rows, cols) tensors) padded back to the rollout's width, rows in order."""
        width = rollout.completion_ids.shape[1]
        parts, order = [], []
        with torch.no_grad():
            for rows in self.micro_batches(rollout, list(range(len(rollout)))):
                out = fn(rollout.select(rows))
                parts.append([t if t.dim() == 1 else torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in out])
                order += rows
        inverse = torch.argsort(torch.tensor(order, device=rollout.completion_ids.device))
        return [torch.cat(column)[inverse] for column in zip(*parts, strict=True)]

    def experience(
        self, rollout: RolloutBatch, rewards: torch.Tensor, reference=None, fresh: int | None = None
    ) -> dict[str, torch.Tensor]:
        """The rollout's experience, with the frozen ``reference``'s log-probs and V_ref(s_1), and
        under ``is_correction`` the trainer's log-probs before the update (``old_log_probs``) and
        the truncated importance weights (``is_weights``). ``fresh``: the leading rows sampled now
        (None: all), the rows ``rollout/logprob_abs_diff`` measures."""
        exp = {"rewards": rewards, "mask": rollout.completion_mask, "behavior_log_probs": rollout.behavior_log_probs}
        if reference is not None:
            ref = self.no_grad_pass(lambda mb: self.forward(reference, mb, temperature=self.temperature)[:2], rollout)
            exp["ref_log_probs"], exp["ref_initial_value"] = ref
        self.fresh = len(rollout) if fresh is None else fresh
        self.rollout_metrics, self._mismatch = {}, None
        if self.is_correction is None and (self.temperature == self.sampling_temperature or not self.fresh):
            self._mismatch = [0.0, 0.0]  # measured by the first optimizer step's forward passes
            return exp
        old = self.no_grad_pass(
            lambda mb: self.forward(self.policy, mb, temperature=self.sampling_temperature)[:1], rollout
        )[0]
        mask, behavior = rollout.completion_mask, rollout.behavior_log_probs
        if self.fresh:
            diff = (old[: self.fresh] - behavior[: self.fresh]).abs()
            self.rollout_metrics["rollout/logprob_abs_diff"] = float(masked_mean(diff, mask[: self.fresh]))
        if self.is_correction is not None:
            weights = truncated_is_weights(old, behavior, mask, self.is_correction, self.is_threshold)
            exp["old_log_probs"], exp["is_weights"] = old, weights
            self.rollout_metrics["rollout/is_weight_mean"] = float(masked_mean(weights, mask))
            capped = (weights >= self.is_threshold * (1 - 1e-6)).float()  # the weights the cap bound
            self.rollout_metrics["rollout/is_truncated_frac"] = float(masked_mean(capped, mask))
        return exp

    def critic_pass(self, rollout: RolloutBatch, exp: dict) -> None:
        """The critic's values before the update, ``exp["old_values"]`` (nothing without a critic)."""
        if self.critic is not None:
            exp["old_values"] = self.no_grad_pass(lambda mb: (completion_values(self.critic, mb),), rollout)[0]

    # ------------------------------------------------------------------------------- the update
    def run(self, rollout: RolloutBatch, exp: dict, optimizers: list, *, step: int = 0,
            backward: Callable | None = None, counted_step: Callable | None = None) -> dict[str, float]:  # fmt: skip
        """The optimizer steps of one rollout batch (after ``objective.prepare(exp)``); returns the
        metrics, each the mean over the steps of its minibatch value. ``optimizers``: the policy's,
        then the critic's (their ``param_groups`` are what is synchronised, clipped and stepped);
        ``backward(loss)``: default ``loss.backward()``; ``counted_step``: run in place of the
        policy optimizer's last step (Lightning's, which counts RL steps)."""
        objective, size = self.objective, len(rollout)
        backward = backward or torch.Tensor.backward
        sums: dict[str, float] = {}
        inert = objective.inert_rows(exp)  # rows whose loss and gradient are exactly zero: no backward
        if inert is not None:
            sums["train/inert_frac"] = inert.float().mean().item()
            inert = inert.tolist()
        # what each optimizer steps (a sharded model's shards, not the weights gathered for the step)
        params = [[p for group in opt.param_groups for p in group["params"]] for opt in optimizers]
        updates = objective.epochs * objective.num_minibatches
        # one optimizer step per rollout: the policy stays the sampler until the update ends
        stats = rollout.stats
        recorded = stats is not None and updates == 1 and stats.temperature == self.temperature
        done = 0
        for _ in range(objective.epochs):
            order = torch.randperm(size).tolist() if updates > 1 else list(range(size))
            for rows in (order[i :: objective.num_minibatches] for i in range(objective.num_minibatches)):
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                whole = self.whole_counts(rollout.completion_mask[rows])
                loss = 0.0  # this minibatch's loss: a non-finite one never reaches the weights
                plan = self.plan(rollout, rows, inert)
                last = max((i for i, (_, grad) in enumerate(plan) if grad), default=-1)
                if self.sync and last < 0:  # every rank reduce-scatters once per optimizer step
                    self.zero_backward(rollout, backward)
                for i, (sub, grad) in enumerate(plan):
                    if self.sync and grad:
                        self.sync.before_backward(i == last)
                    with torch.set_grad_enabled(grad):
                        weighted = self.micro_step(rollout, sub, exp, whole, backward if grad else None,
                                                   recorded=recorded and not grad)  # fmt: skip
                    loss += weighted["train/loss"]
                    for key, value in weighted.items():
                        sums[key] = sums.get(key, 0.0) + value / updates
                if self._mismatch is not None:  # measured over the first step's micro-batches only
                    if self._mismatch[1]:
                        sums["rollout/logprob_abs_diff"] = self._mismatch[0] / self._mismatch[1]
                    self._mismatch = None
                if last < 0 and not self.sync:
                    for group in params:  # an all-zero gradient still steps AdamW (its moments decay)
                        for p in group:
                            p.grad = torch.zeros_like(p) if p.grad is None else p.grad
                done += 1
                for group in params if not self.sync else ():  # sharded: reduce-scattered by the last backward
                    average_gradients(group)
                norms = [_full(torch.nn.utils.clip_grad_norm_(group, self.grad_clip)) for group in params]
                self.nonfinite_skipped += drop_nonfinite_update(loss, norms, params, mode=self.nonfinite, step=step)
                for i, (opt, norm) in enumerate(zip(optimizers, norms, strict=True)):
                    key = "train/grad_norm" if i == 0 else "train/critic_grad_norm"
                    sums[key] = sums.get(key, 0.0) + float(norm) / updates
                    final = i == 0 and done == updates and counted_step is not None
                    counted_step() if final else opt.step()
                if self.sync:
                    self.sync.after_step()  # the next minibatch's forwards see the updated weights
        return sums | self.rollout_metrics

    def zero_backward(self, rollout: RolloutBatch, backward: Callable) -> None:
        """A backward pass of weight zero through every trained model (one row's forward): a sharded
        rank whose rows carry no gradient still takes part in the step's reduce-scatter."""
        mb = rollout.select([0])
        total = self.forward(self.policy, mb, temperature=self.temperature)[0].sum() * 0.0
        if self.critic is not None:
            total = total + completion_values(self.critic, mb).sum() * 0.0
        self.sync.before_backward(True)
        backward(total)

    @staticmethod
    def whole_counts(mask: torch.Tensor) -> tuple[float, float]:
        """A minibatch's completion tokens and rows, as the mean over the data-parallel ranks."""
        tokens, rows = all_sum(mask.sum(), mask.shape[0])
        return float(tokens) / world_size(), float(rows) / world_size()

    def measure_mismatch(self, sub: list[int], mexp: dict) -> None:
        """Add the fresh rows of micro-batch ``sub`` to ``rollout/logprob_abs_diff``: |behaviour -
        the log-probs of this update's forward pass| (rows the update takes from ``rollout.stats``
        without a forward pass are not measured)."""
        keep = torch.tensor([r < self.fresh for r in sub], device=mexp["mask"].device)
        mask = mexp["mask"] * keep[:, None]
        diff = (mexp["log_probs"].detach().float() - mexp["behavior_log_probs"].float()).abs()
        self._mismatch[0] += float((diff * mask).sum())
        self._mismatch[1] += float(mask.sum())

    def plan(self, rollout: RolloutBatch, rows: list[int], inert: list[bool] | None) -> list[tuple[list[int], bool]]:
        """The micro-batches of a minibatch's ``rows`` as ``(rows, backward)``: the rows that carry
        a gradient first, then the inert ones (``backward`` False: they only feed the metrics)."""
        active = rows if inert is None else [r for r in rows if not inert[r]]
        idle = [] if inert is None else [r for r in rows if inert[r]]
        return [
            (sub, grad) for part, grad in ((active, True), (idle, False)) for sub in self.micro_batches(rollout, part)
        ]

    def micro_step(self, rollout, sub, exp, whole, backward=None, recorded=False) -> dict[str, float]:
        """Forward (and with ``backward``, backward) of the micro-batch ``sub`` (rows of the
        rollout); returns its metrics, each already scaled by the micro-batch's share of the
        minibatch (``whole``: its tokens and rows, ``whole_counts``), so that they add up to the
        minibatch's values. ``recorded`` (no grad, policy
        unchanged since the rollout): the policy's log-probs, entropies and V(s_1) come from
        ``rollout.stats`` instead of a forward pass."""
        objective = self.objective
        mb = rollout.select(sub)
        idx = torch.tensor(sub, device=mb.completion_ids.device)
        keep = mb.completion_ids.shape[1]
        mexp = {k: v[idx] if v.dim() == 1 else v[idx, :keep] for k, v in exp.items()}
        if recorded:
            mexp["log_probs"], mexp["initial_value"] = mb.stats.log_probs, mb.stats.initial_value
            mexp["entropy"] = mb.stats.entropy
        else:
            mexp["log_probs"], mexp["initial_value"], mexp["entropy"] = self.forward(
                self.policy, mb, with_entropy=True, entropy_grad=objective.needs_entropy_grad,
                temperature=self.temperature,
            )  # fmt: skip
        if self._mismatch is not None and not recorded:  # the first optimizer step: the policy still samples these
            self.measure_mismatch(sub, mexp)
        if self.critic is not None:
            mexp["values"] = completion_values(self.critic, mb)
        loss, metrics = objective.loss(mexp)
        terms = loss.items() if isinstance(loss, dict) else [(objective.loss_agg_mode, loss)]
        weights = {}  # each aggregation's share of the minibatch held by this micro-batch

        def weight(mode: str) -> float:
            if mode not in weights:
                weights[mode] = aggregation_weight(mode, mb.completion_mask, *whole)
            return weights[mode]

        total = sum(term * weight(mode) for mode, term in terms)
        if backward is not None:
            backward(total)
        metrics = {key: value.detach() if torch.is_tensor(value) else value for key, value in metrics.items()}
        metrics["train/entropy"] = masked_mean(mexp["entropy"].detach(), mb.completion_mask)
        if "ref_log_probs" in mexp:
            kl = sequence_kl(mexp["log_probs"].detach(), mexp["ref_log_probs"], mb.completion_mask)
            metrics["train/kl_ref"] = kl.mean()
        modes = objective.metric_modes
        weighted = {
            key: float(value) * weight(modes.get(key, objective.loss_agg_mode)) for key, value in metrics.items()
        }
        weighted["train/loss"] = sum(float(term.detach()) * weight(mode) for mode, term in terms)
        return weighted
