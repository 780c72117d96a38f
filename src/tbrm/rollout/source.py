"""The data of one RL step: fresh rollouts, stored trajectories, or fresh rollouts plus groups
replayed from a buffer of past ones.

``StepSource.collect`` turns a batch of the train DataModule into ``(rollout, rewards)``:

- a batch of stored trajectories (``data=trajectories``: a ``records`` key) is trained on as it
  is, with its stored rewards: no generation;
- a batch of prompts is sampled by the rollout engine and scored; with a replay buffer
  (``replay=buffer``) only ``1 - replay.fraction`` of the prompts are, the rest are whole groups
  drawn from the buffer, and the fresh groups join the buffer.

``take_generated`` hands the newest fresh completions, as trajectory records, to whoever writes
them out (the rollout-dump callback), once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tbrm.data.trajectories import check_stored, records_from_rollout, to_rollout_batch
from tbrm.rollout.batch import RolloutBatch


class StepSource:
    """Where each step's completions come from.

    Args:
        engine: a ``tbrm.rollout.engine.RolloutEngine`` sampling from the policy.
        tokenizer: the policy's tokenizer (stored trajectories are tokenized with it).
        score: ``RolloutBatch -> (batch,) tensor`` of rewards (the module's checked reward).
        objective: what the update needs of stored trajectories (``check_stored``).
        rollout: ``n, temperature, top_p, max_new_tokens`` of the training rollouts.
        replay: a ``tbrm.data.replay.ReplayBuffer`` or None.
        policy_id: recorded as ``policy`` in the records the step writes out.
    """

    def __init__(self, engine, tokenizer, score: Callable[[RolloutBatch], torch.Tensor], objective, rollout: dict,
                 replay=None, policy_id: str | None = None) -> None:  # fmt: skip
        self.engine, self.tokenizer, self.score, self.objective = engine, tokenizer, score, objective
        self.sampling = {k: rollout[k] for k in ("n", "temperature", "top_p", "max_new_tokens") if k in rollout}
        self.replay, self.policy_id = replay, policy_id
        self.generated = 0  # completions sampled during training (0 when training from a file)
        self.stats: dict[str, float] = {}  # the last step's replay metrics
        self.fresh = 0  # the leading rows of the last step's batch sampled in that step
        self._newest: tuple[RolloutBatch, torch.Tensor, int] | None = None

    @property
    def temperature(self) -> float:
        return self.sampling.get("temperature", 1.0)

    def collect(self, batch: dict, step: int, device) -> tuple[RolloutBatch, torch.Tensor]:
        """The step's ``(rollout, rewards (batch,))`` on ``device``."""
        self.stats, self.fresh = {}, 0
        if "records" in batch:
            check_stored(batch["records"], self.objective, self.temperature, "stored trajectories")
            return self._from_records(batch["records"], device)
        prompts, answers = batch["prompt"], batch["answer"]
        drawn = []
        if self.replay is not None:
            drawn = self.replay.sample(round(len(prompts) * self.replay.fraction), step)
            keep = len(prompts) - len(drawn)
            prompts, answers = prompts[:keep], answers[:keep]
        rollout = self.engine.generate(prompts, answers, **self.sampling)
        rewards = self.score(rollout)
        self.fresh = len(rollout)
        self.generated += self.fresh
        self._newest = (rollout, rewards, step)
        if self.replay is None:
            return rollout, rewards
        fresh = records_from_rollout(rollout, rewards.tolist(), **self.record_meta(step))
        n = self.sampling.get("n", 1)
        self.replay.add([fresh[i : i + n] for i in range(0, len(fresh), n)], step)
        if not drawn:
            return rollout, rewards
        old = [r for _, group in drawn for r in group]
        check_stored(old, self.objective, self.temperature, "replayed trajectories")
        self.stats = {
            "replay/size": float(len(self.replay)),
            "replay/drawn": float(len(old)),
            "replay/age_mean": sum(step - s for s, g in drawn for _ in g) / len(old),
        }
        return self._from_records(fresh + old, device)

    def _from_records(self, records: list[dict], device) -> tuple[RolloutBatch, torch.Tensor]:
        rewards = torch.tensor([r["reward"] for r in records], device=device)
        return to_rollout_batch(records, self.tokenizer, device), rewards

    def record_meta(self, step: int) -> dict:
        """What each trajectory record of step ``step`` carries besides the completion."""
        return {
            "eos_token_id": self.tokenizer.eos_token_id,
            "policy": self.policy_id,
            "step": step,
            "temperature": self.sampling.get("temperature"),
            "top_p": self.sampling.get("top_p"),
        }

    def take_generated(self) -> tuple[list[dict], int] | None:
        """``(records, step)`` of the newest fresh completions not yet taken, or None."""
        if self._newest is None:
            return None
        rollout, rewards, step = self._newest
        self._newest = None
        return records_from_rollout(rollout, rewards.tolist(), **self.record_meta(step)), step
