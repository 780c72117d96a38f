"""A paper preset's RL step at the paper's size: seconds and GPU memory per step.

    python benchmarks/paper_step.py --data-dir ../shared/data/math                  # on a GPU
    python benchmarks/paper_step.py --data-dir ../shared/data/math --presets tbrm_n1 ppo_n1
    python benchmarks/paper_step.py --data-dir ../shared/data/math --shape tiny --prompts 8 \\
        --max-new-tokens 16 --cpu                                                  # a CPU check

Each preset runs through the real ``run.py`` as composed (``experiment=paper/<preset>``: fp32
trained weights with bf16 autocast, the bf16 reference, SDPA, gradient checkpointing, 8
completions per micro-batch), on a random-init stand-in of the model's shape
(``tbrm.models.standin``: the real model's memory and compute, none of its skill), with
training prompts from a DAPO-shaped copy of MATH-500. Validation is off
(``trainer.limit_val_batches=0``). A random model almost never emits EOS, so every response
runs to ``max_new_tokens``: the worst case of the preset's budget. Prints a markdown table
(per-step medians after the first step) and writes it with the raw figures under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
METRICS = {  # column: (CSV key, format)
    "rollout s": ("perf/rollout_s", "{:.1f}"),
    "reference s": ("perf/ref_s", "{:.1f}"),
    "update s": ("perf/update_s", "{:.1f}"),
    "step s": ("perf/step_s", "{:.1f}"),
    "tokens/s": ("perf/tokens_per_s", "{:.0f}"),
    "response tokens": ("train/response_length", "{:.0f}"),
    "peak GB": ("perf/peak_mem_gb", "{:.1f}"),
}


def dapo_copy(data_dir: Path, path: Path) -> Path:
    """MATH-500 problems in DAPO-Math-17k's row format (chat prompt in DAPO's wrapper)."""
    rows = []
    for line in (data_dir / "math500.jsonl").read_text().splitlines():
        row = json.loads(line)
        prompt = [{"role": "user", "content": WRAPPER.format(row["problem"])}]
        rows.append({"prompt": prompt, "reward_model": {"ground_truth": row["answer"]}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_preset(preset: str, model_dir: Path, train_file: Path, args, out: Path, extra=()) -> dict:
    """One ``experiment=paper/<preset>`` job of ``args.steps`` steps; ``extra``: more overrides."""
    job = out / preset
    cmd = [
        sys.executable,
        "run.py",
        f"experiment=paper/{preset}",
        f"model.name_or_path={model_dir}",
        f"data.task.train.path={train_file}",
        f"data.task.validation.path={args.data_dir / 'math500.jsonl'}",
        f"data.batch_size={args.prompts}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"trainer.max_steps={args.steps}",
        "+trainer.limit_val_batches=0",
        "eval.during_training=[]",
        "logger=csv",
        f"hydra.run.dir={job}",
        *(["trainer.accelerator=cpu", "trainer.precision=32-true"] if args.cpu else []),
        *extra,
    ]
    job.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(job / "stdout.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    wall = time.time() - start
    if proc.returncode != 0:
        tail = (job / "stdout.log").read_text()[-3000:]
        return {"preset": preset, "failed": True, "wall_s": wall, "tail": tail}
    rows = [r for r in csv.DictReader(open(job / "csv/metrics.csv")) if r.get("perf/step_s")]
    later = rows[1:] or rows  # the first step pays for CUDA kernels' first launches
    figures = {col: statistics.median(float(r[key]) for r in later) for col, (key, _) in METRICS.items()}
    figures["peak GB"] = max(float(r["perf/peak_mem_gb"]) for r in rows)
    return {"preset": preset, "failed": False, "wall_s": wall, "steps": len(rows), **figures}


def table(results: list[dict], args) -> str:
    head = "| preset | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + " --- |" * (len(METRICS) + 1)]
    for r in results:
        if r["failed"]:
            lines.append(f"| {r['preset']} | failed (see stdout.log) |" + " |" * (len(METRICS) - 1))
            continue
        cells = [fmt.format(r[col]) for col, (_, fmt) in METRICS.items()]
        lines.append(f"| {r['preset']} | " + " | ".join(cells) + " |")
    device = "CPU" if args.cpu else _gpu_name()
    lines += [
        "",
        f"{args.shape} stand-in, {args.prompts} prompts per step, {args.max_new_tokens}-token responses, "
        f"{args.steps} steps (medians after the first), {device}.",
        "Reproduce: python benchmarks/paper_step.py " + " ".join(sys.argv[1:]),
    ]
    return "\n".join(lines)


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/math")
    parser.add_argument("--presets", nargs="+", default=["tbrm_n1"])
    parser.add_argument("--shape", default="qwen2.5-math-1.5b")
    parser.add_argument("--model-dir", type=Path, default=None, help="a saved model (else a stand-in is built)")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "logs/benchmarks/paper_step")
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir
    if model_dir is None:
        from tbrm.models.standin import save_qwen2_standin

        model_dir = args.out / f"standin-{args.shape}"
        if not (model_dir / "config.json").exists():
            t0 = time.time()
            save_qwen2_standin(model_dir, args.shape)
            print(f"built the {args.shape} stand-in in {time.time() - t0:.0f} s", flush=True)
    train_file = dapo_copy(args.data_dir, args.out / "dapo_math500.jsonl")
    results = []
    for preset in args.presets:
        results.append(run_preset(preset, model_dir.resolve(), train_file, args, args.out))
        print(json.dumps(results[-1]), flush=True)
        text = table(results, args)
        (args.out / "results.md").write_text(text + "\n")
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
