"""Reports over Hydra multiruns: ``python -m tbrm.report <multirun dir>``."""

from tbrm.report.runs import Job, JobStatusCallback, latest_sweep, load_sweep

__all__ = ["Job", "JobStatusCallback", "latest_sweep", "load_sweep"]
