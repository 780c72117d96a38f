"""``python -m tbrm.report <multirun dir> [--out DIR] [--wandb]``: see ``tbrm.report.build``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tbrm.io import write_json
from tbrm.report.build import make_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tbrm.report", description=__doc__)
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. logs/train/multiruns/<time>")
    parser.add_argument("--out", default=None, help="where the report goes (default: <sweep_dir>/report)")
    parser.add_argument("--wandb", action="store_true", help="also build the W&B Report (saved when W&B is online)")
    parser.add_argument("--project", default=None, help="W&B project (default: the jobs' logger.wandb.project)")
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"), help="W&B entity (default: yours)")
    args = parser.parse_args(argv)

    out = Path(args.out) if args.out else Path(args.sweep_dir).resolve() / "report"
    report = make_report(args.sweep_dir, out)
    print(report.markdown)
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    if args.wandb:
        from tbrm.report.wandb_report import build_wandb_report, report_spec, sweep_group

        first = report.jobs[0]
        project = args.project or first.get("logger.wandb.project") or "tbrm"
        group = sweep_group(report.arms, report.sweep_dir.name)
        online = os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun")
        entity = args.entity
        if entity is None and online:
            import wandb

            try:
                entity = wandb.Api().default_entity
            except wandb.errors.UsageError as error:
                raise SystemExit(
                    f"--wandb with W&B online needs a login: {error} Run `wandb login`, or set "
                    "WANDB_MODE=offline to build the report without saving it."
                ) from error
        wr_report = build_wandb_report(
            report.arms,
            report.markdown,
            project=project,
            entity=entity or "offline",
            group=group,
            title=f"Sweep {group}",
        )
        if online:
            wr_report.save()
            print(f"W&B report: {wr_report.url}")
        else:
            spec = out / "wandb_report.json"
            write_json(spec, report_spec(wr_report))
            print(f"W&B is offline (WANDB_MODE={os.environ['WANDB_MODE']}): report not saved; its spec: {spec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
