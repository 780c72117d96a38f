"""What keeps a bad number out of the weights: a non-finite loss or gradient norm stops the run
before the optimizer step, or drops the update (``guard.nonfinite``). Rewards are checked where they
are computed (``tbrm.rewards.scoring``)."""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


def drop_nonfinite_update(loss: float, norms: list[torch.Tensor], params: list[list], *, mode: str, step: int) -> bool:
    """Whether this update was dropped. With every value finite: False. Otherwise ``mode="stop"``
    raises ``FloatingPointError`` (nothing has reached the weights yet); ``mode="skip"`` clears the
    gradients of ``params``, so that the optimizer step that follows leaves every parameter and
    AdamW moment as it was (AdamW skips parameters without a gradient), and returns True."""
    if math.isfinite(loss) and all(bool(norm.isfinite()) for norm in norms):
        return False
    what = f"loss {loss}" if not math.isfinite(loss) else "gradient norm " + ", ".join(str(float(n)) for n in norms)
    if mode != "skip":
        raise FloatingPointError(
            f"step {step}: non-finite {what}; nothing was applied to the weights. Lower optimizer.lr, check the "
            "rewards and model.dtype, or set guard.nonfinite=skip to drop such updates (counted in "
            "train/nonfinite_skipped)."
        )
    log.warning("step %d: non-finite %s; this update is dropped (guard.nonfinite=skip)", step, what)
    for group in params:
        for p in group:
            p.grad = None
    return True
