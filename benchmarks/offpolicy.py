"""TBRM from off-policy data on the embedded default: a fixed file, and replay.

    python benchmarks/offpolicy.py                               # both studies, 3 seeds
    python benchmarks/offpolicy.py --study offline --betas 0.05 0.1
    python benchmarks/offpolicy.py --study replay --seeds 0

Both studies go through the real ``run.py``, with ``--jobs`` jobs side by side (one thread each):

1. ``offline``: ``mode=generate`` samples ``--samples-per-prompt`` completions for every training
   prompt from the warm start (once; reused when the file exists), then TBRM trains only on that
   file (``data=trajectories``: no generation during training; held-out prompts for validation),
   for each beta and seed, at the default budget of 128 trajectories x 150 steps.
2. ``replay``: TBRM at an equal number of generated completions (19,200) with replay off (128
   fresh per step, 150 steps) and on (``replay=buffer``: 64 fresh + 64 replayed per step, 300
   steps, buffer of 1,024, at most 4 steps old).

Prints a markdown table (validation accuracy before and after, mean ± sd over seeds, and each
seed) and writes it with the raw figures under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(job_dir: Path, overrides: list[str], threads: int) -> dict:
    """One ``run.py`` job (skipped when its summary exists); returns its summary."""
    if not (job_dir / "summary.json").exists():
        job_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "run.py", *overrides, "logger=csv", f"hydra.run.dir={job_dir}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with open(job_dir / "stdout.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    path = job_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {"failed": str(job_dir / "stdout.log")}


def row(label: str, summaries: list[dict]) -> str:
    done = [s for s in summaries if "failed" not in s]

    def stat(when, key):
        values = [s[when][key] for s in done]
        if not values:
            return "n/a"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    gains = ", ".join(
        f"{100 * (s['final']['val/accuracy'] - s['initial']['val/accuracy']):+.1f} / "
        f"{100 * (s['final']['val/accuracy_sampled'] - s['initial']['val/accuracy_sampled']):+.1f}"
        for s in done
    )
    return (
        f"| {label} | {stat('initial', 'val/accuracy')} -> {stat('final', 'val/accuracy')} | "
        f"{stat('initial', 'val/accuracy_sampled')} -> {stat('final', 'val/accuracy_sampled')} | {gains} | "
        f"{len(summaries) - len(done)} |"
    )


HEADER = [
    "| run | val/accuracy start -> end | val/accuracy_sampled start -> end | per seed, points (greedy / sampled) "
    "| failed |",
    "| --- | --- | --- | --- | --- |",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=["all", "offline", "replay"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "benchmarks" / "offpolicy")
    args = parser.parse_args()
    threads = max((os.cpu_count() or 1) // args.jobs, 1)
    subprocess.run([sys.executable, "run.py", "mode=sft"], cwd=ROOT, check=True)  # the shared warm start
    lines = []
    if args.study in ("all", "offline"):
        samples = args.out / "warmstart_samples"
        if not (samples / "trajectories").exists():
            subprocess.run(
                [sys.executable, "run.py", "mode=generate", f"generate.n={args.samples_per_prompt}",
                 f"hydra.run.dir={samples}"],
                cwd=ROOT, check=True,
            )  # fmt: skip
        jobs = [(beta, seed) for beta in args.betas for seed in args.seeds]
        common = ["data=trajectories", f"data.path={samples / 'trajectories'}"]
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(
                pool.map(
                    lambda j: launch(args.out / f"offline_beta{j[0]}" / f"seed{j[1]}",
                                     [*common, f"algorithm.beta={j[0]}", f"seed={j[1]}"], threads),
                    jobs,
                )
            )  # fmt: skip
        lines += [
            f"TBRM trained only on {args.samples_per_prompt} warm-start samples per training prompt "
            "(data=trajectories, no generation), 128 x 150 steps; validation on 1,000 held-out problems.",
            "",
            *HEADER,
        ]
        for beta in args.betas:
            lines.append(row(f"offline, beta {beta}", [d for (b, _), d in zip(jobs, done, strict=True) if b == beta]))
        lines.append("")
    if args.study in ("all", "replay"):
        arms = {
            "replay off (128 fresh x 150 steps)": [],
            "replay on (64 fresh + 64 replayed x 300 steps)": ["replay=buffer", "trainer.max_steps=300",
                                                               "trainer.val_check_interval=150"],
        }  # fmt: skip
        jobs = [(arm, seed) for arm in arms for seed in args.seeds]
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(
                pool.map(
                    lambda j: launch(args.out / ("replay_on" if "on" in j[0] else "replay_off") / f"seed{j[1]}",
                                     [*arms[j[0]], f"seed={j[1]}"], threads),
                    jobs,
                )
            )  # fmt: skip
        lines += [
            "TBRM at an equal number of generated completions (19,200), replay off and on.",
            "",
            *HEADER,
        ]
        for arm in arms:
            lines.append(row(arm, [d for (a, _), d in zip(jobs, done, strict=True) if a == arm]))
        lines.append("")
    lines.append("Reproduce: python benchmarks/offpolicy.py " + " ".join(sys.argv[1:]))
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_{args.study}.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
