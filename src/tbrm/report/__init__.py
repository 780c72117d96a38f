"""Reports over Hydra multiruns: ``python -m tbrm.report <multirun dir>``."""

from tbrm.report.runs import Job, JobStatusCallback, load_sweep

__all__ = ["Job", "JobStatusCallback", "load_sweep"]
