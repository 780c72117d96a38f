"""SIGTERM and SIGINT: the run stops at a step boundary with a checkpoint, writes status.json
(interrupted, the signal, the step, the checkpoint), exits 128 + the signal number, and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_env, run_py

pytestmark = pytest.mark.slow

LONG = ["trainer.max_steps=300", "trainer.val_check_interval=150", "callbacks.rollout_dump.enabled=true",
        "rollout.engine=compact"]  # fmt: skip


def start(tmp: Path, run: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"{run.name}.stderr"
    cmd = [sys.executable, "run.py", f"paths.log_dir={tmp}/logs", f"paths.cache_dir={tmp}/cache", *TINY, *LONG,
           f"hydra.run.dir={run}", *extra]  # fmt: skip
    env = run_env()
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w")), log


def wait_for(condition, proc, timeout=600.0):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended first"
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_training_checkpoints_stops_and_resumes(tmp_path, signum, code):
    run = tmp_path / "run"
    proc, _ = start(tmp_path, run)
    wait_for(lambda: (run / "rollouts" / "rollouts-step000002-rank0.jsonl").exists(), proc)
    proc.send_signal(signum)
    assert proc.wait(timeout=300) == code
    status = json.loads((run / "status.json").read_text())
    name = signal.Signals(signum).name
    assert status["status"] == "interrupted" and status["signal"] == name and 2 <= status["step"] < 300
    assert status["checkpoint"] == str(run / "checkpoints" / "last.ckpt") and Path(status["checkpoint"]).is_file()
    assert f"{name} received at step {status['step']}; resume with ckpt_path=" in status["error"]
    assert not (run / "summary.json").exists()
    shards = sorted((run / "rollouts").iterdir())
    assert len(shards) == status["step"]  # the step that was running when the signal came finished, no other
    run_py(ROOT, tmp_path, *LONG, f"ckpt_path={status['checkpoint']}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 300 and json.loads((run / "status.json").read_text())["status"] == "completed"


def test_a_signal_outside_the_training_loop_ends_the_run_at_once(tmp_path):
    run = tmp_path / "run"
    proc, log = start(tmp_path, run, "model.warm_start.steps=100000")
    wait_for(lambda: "warm start (SFT)" in log.read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM" and status["checkpoint"] is None
    assert not list((tmp_path / "cache").glob("warm_start/*/warm_start.json"))  # no half-built warm start


class SignalAt(__import__("lightning").Callback):
    """Sends ``signum`` to this process inside the given step (before StopOnSignal sees the step end)."""

    def __init__(self, step: int, signum=signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_a_signal_in_a_step_that_validates_keeps_the_validations_checkpoint(tiny_model_dir, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from test_module import make

    from tbrm.data.arithmetic import ArithmeticTask
    from tbrm.data.datamodule import PromptDataModule
    from tbrm.interrupt import GUARD, Interrupted, StopOnSignal

    module = make(tiny_model_dir)
    ckpts = tmp_path / "checkpoints"
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, val_check_interval=2, check_val_every_n_epoch=None, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[SignalAt(2), StopOnSignal(ckpts), ModelCheckpoint(dirpath=ckpts, filename="last")],
    )  # fmt: skip
    GUARD.install()
    try:
        with pytest.raises(Interrupted, match="SIGTERM received at step 2; resume with ckpt_path=") as caught:
            trainer.fit(module, datamodule=PromptDataModule(ArithmeticTask(b_digits=1, num_val=8, num_test=8), 4, 8))
    finally:
        GUARD.received, GUARD.deferred = None, False
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert caught.value.step == 2 and caught.value.exit_code == 143
    import torch

    saved = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 and saved["ranks"][0]["last_val_step"] == 2  # written after step 2's validation


def test_a_second_signal_stops_at_once():
    from tbrm.interrupt import Interrupted, SignalGuard

    guard = SignalGuard()
    guard.deferred = True  # inside the training loop
    guard._handle(signal.SIGINT, None)  # the first: noted, the step goes on
    assert guard.received == signal.SIGINT
    with pytest.raises(Interrupted, match="SIGINT received"):
        guard._handle(signal.SIGINT, None)
    with pytest.raises(Interrupted):
        guard.check()  # the next job of a multirun does not start
