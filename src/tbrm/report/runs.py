"""The jobs of a Hydra multirun, read back from disk: status, overrides, resolved config, metrics.

Each job folder (``<sweep>/<job number>/``) holds what ``run.py`` and Hydra wrote:

- ``.hydra/overrides.yaml``: the job's overrides (the sweep's parameters among them);
- ``status.json``: ``completed``, ``failed`` with the error, or ``interrupted`` with the signal
  and the checkpoint to resume from, written by ``JobStatusCallback`` (a Hydra callback in
  ``conf/hydra/default.yaml``) when the job ends;
- ``csv/hparams.yaml`` and ``csv/metrics.csv``: the resolved config and every logged metric;
- ``wandb/offline-run-*``: the same metrics in the W&B offline run (read when the CSV is missing);
- ``summary.json``: validation before and after training, steps, wall time, peak memory.

A job without ``status.json`` was killed (or is still running); a job that failed is kept, with
its error, so that a report names it instead of dropping it. A file that cannot be read (cut short
by a crash or a full disk) is named in the job's error, and the other jobs are read as usual.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback

from tbrm.distributed import launch_rank
from tbrm.interrupt import Interrupted
from tbrm.io import read_json, write_json

COMPLETED, FAILED, INCOMPLETE, INTERRUPTED = "completed", "failed", "incomplete", "interrupted"


class JobStatusCallback(Callback):
    """Write ``<output_dir>/status.json`` when a Hydra job ends: its status and, if it failed,
    the error and traceback (Hydra itself keeps a failed job's exception only in memory)."""

    def on_job_end(self, config, job_return: JobReturn, **kwargs: Any) -> None:
        if launch_rank() != 0:  # the other data-parallel ranks of the job run it too: one writes
            return
        out = Path(job_return.hydra_cfg.hydra.runtime.output_dir) if job_return.hydra_cfg else None
        if out is None or not out.exists():
            return
        record: dict[str, Any] = {"status": COMPLETED, "overrides": list(job_return.overrides or [])}
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            record.update(
                status=FAILED,
                error=f"{type(error).__name__}: {error}",
                traceback="".join(traceback.format_exception(error)),
            )
            if isinstance(error, Interrupted):
                record.update(status=INTERRUPTED, signal=error.signal, step=error.step, checkpoint=error.checkpoint)
        elif job_return.status != JobStatus.COMPLETED:
            record["status"] = INCOMPLETE
        try:
            write_json(out / "status.json", record)
        except OSError as err:  # a full disk: say so and what happened, where it is not buried
            ended = record.get("error", record["status"])
            print(f"could not write {out / 'status.json'} ({err}); the job ended: {ended}", file=sys.stderr)


@dataclass
class Job:
    """One job of a sweep as found on disk."""

    dir: Path
    number: int
    status: str
    overrides: list[str]
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    error: str = ""

    def override(self, key: str) -> str | None:
        """The value this job's overrides give ``key`` (``method=tbrm_n1`` -> ``tbrm_n1``)."""
        return dict(o.lstrip("+~").split("=", 1) for o in self.overrides if "=" in o).get(key)

    def get(self, dotted: str, default: Any = None) -> Any:
        """A value of the resolved config by dotted key."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def algorithm(self) -> str:
        name = (  # a job without a summary (failed, interrupted): its config's name, else its objective's class
            self.summary.get("algorithm")
            or self.get("algorithm.name")
            or str(self.get("algorithm._target_", "?")).rsplit(".", 1)[-1]
        )
        return name.lower()

    @property
    def n(self) -> int | None:
        return self.get("rollout.n")

    @property
    def beta(self) -> float | None:
        beta = self.get("algorithm.beta")
        return float(beta) if isinstance(beta, int | float) else None

    @property
    def seed(self) -> int | None:
        return self.get("seed")


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def offline_run(job_dir: Path) -> dict | None:
    """The job's W&B offline run (every part of a resumed one), read
    (``tbrm.wandb_offline.read_offline_runs``), or None."""
    from tbrm.wandb_offline import read_offline_runs

    return read_offline_runs(job_dir)


def read_metrics(job_dir: Path, wandb_run: dict | None = None) -> pd.DataFrame:
    """Every logged metric of a job, one row per logging call, with a ``step`` column: from the
    CSV logger, or from the W&B offline run (``wandb_run``, read when not given) when the job
    logged only to W&B."""
    csv_path = job_dir / "csv" / "metrics.csv"
    if csv_path.exists() and csv_path.stat().st_size:
        return pd.read_csv(csv_path)
    wandb_run = wandb_run or offline_run(job_dir)
    if wandb_run:
        frame = pd.DataFrame(wandb_run["history"])
        if "trainer/global_step" in frame:
            frame = frame.rename(columns={"trainer/global_step": "step"})
        return frame.drop(columns=[c for c in frame if c.startswith("_")], errors="ignore")
    return pd.DataFrame()


def _resolved_config(job_dir: Path, wandb_run: dict | None) -> dict:
    """The resolved config the job logged (csv/hparams.yaml, else the W&B run's), or Hydra's
    composed config (unresolved interpolations kept as text) for a job that failed before logging."""
    hparams = _read_yaml(job_dir / "csv" / "hparams.yaml")
    if hparams:
        return hparams
    if wandb_run and wandb_run["config"]:
        return {k: v for k, v in wandb_run["config"].items() if not k.startswith("_")}
    return _read_yaml(job_dir / ".hydra" / "config.yaml") or {}


def _read_or_note(path: Path, read, errors: list[str], default):
    """``read(path)`` when the file exists; a file that cannot be read adds its name and the
    reason to ``errors`` (the job is then reported as failed) and gives ``default``."""
    if not path.exists():
        return default
    try:
        return read(path)
    except Exception as err:  # a truncated or foreign file: name it, read the other jobs
        errors.append(f"cannot read {path}: {err}")
        return default


def read_job(job_dir: str | Path) -> Job:
    """Read one job folder (a folder with ``.hydra/``)."""
    job_dir = Path(job_dir)
    errors: list[str] = []
    has_csv = (job_dir / "csv" / "hparams.yaml").exists() and (job_dir / "csv" / "metrics.csv").exists()
    wandb_run = None if has_csv else _read_or_note(job_dir / "wandb", lambda _: offline_run(job_dir), errors, None)
    status_record = _read_or_note(job_dir / "status.json", read_json, errors, {})
    summary = _read_or_note(job_dir / "summary.json", read_json, errors, {})
    metrics = _read_or_note(job_dir, lambda d: read_metrics(d, wandb_run), errors, pd.DataFrame())
    status = status_record.get("status") or (COMPLETED if summary else INCOMPLETE)
    if status == COMPLETED and not summary and (job_dir / "csv").exists():
        status = INCOMPLETE  # a training job that ended without writing its summary
    if errors:
        status = FAILED
    try:
        number = int(job_dir.name)
    except ValueError:
        number = -1
    return Job(
        dir=job_dir,
        number=number,
        status=status,
        overrides=list(_read_yaml(job_dir / ".hydra" / "overrides.yaml") or []),
        config=_resolved_config(job_dir, wandb_run),
        summary=summary,
        metrics=metrics,
        error="; ".join(errors)
        or status_record.get(
            "error", "" if status != INCOMPLETE else "no status.json: killed, interrupted or still running"
        ),  # fmt: skip
    )


def load_sweep(sweep_dir: str | Path) -> list[Job]:
    """Every job of a multirun directory, in job-number order (failed and interrupted ones too)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(
            f"{sweep_dir} is not a directory; pass a multirun folder (logs/train/multiruns/<time>)."
        )
    dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    if not dirs and (sweep_dir / ".hydra" / "overrides.yaml").exists():
        dirs = [sweep_dir]  # a single run
    if not dirs:
        raise FileNotFoundError(
            f"no Hydra jobs in {sweep_dir} (no <job>/.hydra/overrides.yaml); pass the folder a "
            "`python run.py -m ...` printed, e.g. logs/train/multiruns/<time>."
        )
    jobs = [read_job(d) for d in dirs]
    return sorted(jobs, key=lambda j: (j.number, str(j.dir)))


def latest_sweep(root: str | Path | None = None) -> Path:
    """The newest multirun folder under ``<root>/logs/*/multiruns/`` (root: the current folder or
    the nearest parent that has ``logs/``), for notebooks opened without a sweep named."""
    start = Path(root or Path.cwd()).resolve()
    for base in (start, *start.parents):
        sweeps = [p for p in base.glob("logs/*/multiruns/*") if p.is_dir()]
        if sweeps:
            return max(sweeps, key=lambda p: p.stat().st_mtime)
    raise FileNotFoundError(
        f"no logs/*/multiruns/* under {start} or its parents; run a sweep (python run.py -m ...) "
        "or set TBRM_SWEEP_DIR to a multirun folder."
    )


def json_safe(value: Any) -> Any:
    """NaN-free JSON values for report files."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
