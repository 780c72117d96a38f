"""DDP against one process through run.py: time per step and the final weights.

    python benchmarks/ddp.py                               # TBRM on the default task, 2 CPU ranks (gloo)
    python benchmarks/ddp.py --trainer fsdp_cpu                  # FSDP2 on 2 CPU ranks
    python benchmarks/ddp.py --algorithm grpo --steps 10 --trainer ddp --single gpu   # on a GPU node

Both runs train the same config and seed from the same warm start; the DDP run splits each step's
prompts over the ranks. Prints the median ``perf/step_s`` and its phases over the steps after the
first, the peak memory, and the largest difference between the two final policies (TBRM with the
same completions would match to float rounding; with fresh rollouts the ranks sample their own
completions, so the weights differ by what the samples do: see ``tests/test_run_ddp.py`` for the
exact comparison on stored trajectories).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("perf/step_s", "perf/rollout_s", "perf/ref_s", "perf/update_s", "perf/peak_mem_gb")


def run(out: Path, *overrides: str) -> float:
    cmd = [sys.executable, "run.py", f"hydra.run.dir={out}", *overrides]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.time() - start


def medians(out: Path) -> dict[str, float]:
    with open(out / "csv" / "metrics.csv", newline="") as file:
        rows = [r for r in csv.DictReader(file) if r.get("perf/step_s")][1:]  # the first step warms up
    return {key: statistics.median(float(r[key]) for r in rows) for key in PHASES}


def max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a / "policy" / "model.safetensors"), load_file(b / "policy" / "model.safetensors")
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", default="tbrm")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trainer", default="ddp_cpu", help="the data-parallel trainer config")
    parser.add_argument("--single", default="cpu", help="the one-process trainer config")
    parser.add_argument("overrides", nargs="*", help="more run.py overrides for both runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = [f"algorithm={args.algorithm}", f"trainer.max_steps={args.steps}", f"paths.log_dir={tmp}/logs",
                  "trainer.val_check_interval=1000", "logger=[csv]", *args.overrides]  # fmt: skip
        run(tmp / "warm", "mode=sft", *common)  # the warm start, built once for both runs
        walls = {name: run(tmp / name, f"trainer={trainer}", *common)
                 for name, trainer in (("one process", args.single), (args.trainer, args.trainer))}  # fmt: skip
        stats = {name: medians(tmp / name) for name in walls}
        diff = max_weight_diff(tmp / "one process", tmp / args.trainer)
    print(f"python benchmarks/ddp.py --algorithm {args.algorithm} --steps {args.steps} --trainer {args.trainer}"
          + "".join(f" {o}" for o in args.overrides))  # fmt: skip
    print("\n| run | step s | rollout s | ref s | update s | peak GB per process | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, s in stats.items():
        cells = " | ".join(f"{s[k]:.3f}" for k in PHASES)
        print(f"| {name} | {cells} | {walls[name]:.0f} |")
    speedup = stats["one process"]["perf/step_s"] / stats[args.trainer]["perf/step_s"]
    print(f"\nstep time, one process / {args.trainer}: {speedup:.2f}x; largest |weight difference| after training: "
          f"{diff:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
