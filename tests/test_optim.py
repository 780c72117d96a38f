"""The optimizer and its schedule (tbrm.optim)."""

import pytest
import torch

from tbrm.optim import adamw, warmup_cosine, warmup_cosine_schedule


def test_warmup_cosine_schedule():
    lam = warmup_cosine(warmup_steps=2, total_steps=10, min_ratio=0.1)
    assert lam(0) == 0.5 and lam(1) == 1.0 and lam(2) == 1.0
    assert lam(6) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lam(10) == pytest.approx(0.1) and lam(50) == pytest.approx(0.1)


def test_adamw_is_fused_on_cpu_and_steps_as_the_unfused_one():
    torch.manual_seed(0)
    start, grads = torch.randn(3, 5), [torch.randn(3, 5) for _ in range(3)]
    params = {}
    for fused in (True, False):
        p = torch.nn.Parameter(start.clone())
        opt = adamw([p], lr=1e-2, weight_decay=0.1) if fused else torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1)
        assert opt.defaults["fused"] is (True if fused else None)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        params[fused] = p.detach()
    torch.testing.assert_close(params[True], params[False])
    assert adamw([torch.nn.Parameter(torch.zeros(2, device="meta"))], lr=1e-3).defaults["fused"] is None


def test_the_schedule_steps_the_multiplier_over_the_run():
    opt = adamw([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = warmup_cosine_schedule(opt, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(11):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([warmup_cosine(2, 10, 0.1)(s) for s in range(11)])
    assert lrs[0] == 0.5 and lrs[-1] == pytest.approx(0.1)
