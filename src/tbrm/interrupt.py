"""SIGTERM and SIGINT end a run at a step boundary, with a checkpoint, a status file and a non-zero exit.

Schedulers send SIGTERM before they kill a job (Slurm at its time limit or on preemption), a user
presses Ctrl-C (SIGINT). While training, either signal lets the current RL step finish, saves
``<run>/checkpoints/last.ckpt`` (or, when a validation was due at that step, lets it run and keeps
the checkpoint written after it; a signal between two steps lets the next one run), and raises
:class:`Interrupted`: Hydra's job ends as failed, ``status.json`` says ``interrupted`` with the
signal, the step and the checkpoint, and ``run.py`` exits with 128 + the signal number (143 for
SIGTERM, 130 for SIGINT), as a shell reports a job a signal ended. Resume with
``ckpt_path=<that checkpoint>``. Outside the training loop (warm start, the first validation,
saving) a signal raises at once; a second signal always does.

Lightning's own SIGTERM handling would stop the run with a ``SystemExit`` that exits 0; this
handler replaces it while the loop runs. :func:`run_main` runs ``run.py``'s Hydra entry point: a
failed run finishes its W&B run, then prints its error as the last line (after wandb's shutdown
noise), and a run a signal ended exits 128 + the signal number. Slurm's auto-requeue (``SLURMEnvironment``, SIGUSR1) is
Lightning's and is left as it is (``docs/reliability.md``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """A run stopped by a signal; ``checkpoint`` is what to resume from (None: nothing to resume)."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.signal = signal.Signals(signum).name
        where = f" at step {step}" if step is not None else ""
        then = f"; resume with ckpt_path={checkpoint}" if checkpoint else ""
        super().__init__(f"{self.signal} received{where}{then}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalGuard:
    """Process-wide record of SIGTERM / SIGINT. ``deferred`` (inside the training loop): note the
    signal and let :class:`StopOnSignal` stop at the step boundary; otherwise raise at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferred = False

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        first = self.received is None
        self.received = signum if first else self.received
        if self.deferred and first:
            log.warning("%s received: stopping after this step with a checkpoint (send it again to stop now)",
                        signal.Signals(signum).name)  # fmt: skip
            return
        raise Interrupted(signum)

    def check(self) -> None:
        """Raise if a signal came earlier (e.g. in an earlier job of a multirun)."""
        if self.received is not None:
            raise Interrupted(self.received)


GUARD = SignalGuard()
_FAILURE: list[BaseException] = []  # the error the last job ended with, said again at the end


def remember_failure(job):
    """Decorate a Hydra job function: the error it ends with is kept for :func:`run_main`."""

    @functools.wraps(job)
    def wrapped(*args, **kwargs):
        try:
            return job(*args, **kwargs)
        except BaseException as err:
            _FAILURE[:] = [err]
            raise

    return wrapped


def run_main(main) -> None:
    """``main()`` (a ``@hydra.main`` function). Hydra exits 1 on a failure: then the W&B run is
    finished and closed (its last records reach the file; wandb prints pages of socket errors as it
    shuts down on a full disk or a signal), the error is printed as the last line, and a run a
    signal ended exits 128 + the signal number."""
    try:
        main()
    except SystemExit as done:
        if done.code in (0, None):
            raise
        if _FAILURE:
            with contextlib.suppress(Exception):
                import wandb

                if wandb.run is not None:
                    wandb.finish(exit_code=1)
                wandb.teardown()
            err = _FAILURE[0]
            print(f"run.py: the run ended with {type(err).__name__}: {err}", file=sys.stderr)
        if GUARD.received is not None:
            sys.exit(128 + GUARD.received)
        raise


class StopOnSignal(L.Callback):
    """Lightning callback that stops training at a step boundary after SIGTERM / SIGINT."""

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.after_validation = False  # stop when the validation due now has written its checkpoint

    def on_train_start(self, trainer, pl_module) -> None:
        GUARD.install()  # after Lightning's own SIGTERM handler, which exits 0
        GUARD.deferred = True

    def on_train_end(self, trainer, pl_module) -> None:
        GUARD.deferred = False

    def on_exception(self, trainer, pl_module, exception) -> None:
        GUARD.deferred = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every rank stops at the same step when any got the signal (one all-reduce under DDP)
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(GUARD.received is not None, all=False):
            GUARD.received = GUARD.received or int(signal.SIGTERM)
        if GUARD.received is None or trainer.global_step >= trainer.max_steps:
            return  # no signal, or training is over: the run ends as usual
        loop = trainer.fit_loop.epoch_loop
        if loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            self.after_validation = True  # the validation due now runs and writes the checkpoint
            return
        trainer.save_checkpoint(self.path)
        raise Interrupted(GUARD.received, trainer.global_step, str(self.path))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The next batch is drawn already, so no checkpoint can be taken here: after the validation's
        # checkpoint stop now; a signal that came after the last step's end stops at this step's end.
        if self.after_validation:
            raise Interrupted(GUARD.received, trainer.global_step, str(self.path) if self.path.exists() else None)
