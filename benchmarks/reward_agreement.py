"""How often the Math-Verify reward agrees with the benchmarks' own answers, and how fast it is.

    python benchmarks/reward_agreement.py                      # ../shared/data/math
    python benchmarks/reward_agreement.py --data-dir DIR

Rows: MATH-500 reference solutions (their last ``\\boxed{}``) against ``answer`` (should be ~100%);
the same solutions against the next row's answer (mismatched pairs, should be ~0%); Minerva Math
solutions against the answer read from them; GSM8K test solutions (their ``####`` line) against
the number after ``####``. Prints a markdown table with the command to reproduce.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tbrm.rewards.math_answers import last_boxed, math_verify_reward

ROOT = Path(__file__).resolve().parents[1]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/math")
    args = parser.parse_args()
    math500 = rows(args.data_dir / "math500.jsonl")
    minerva = rows(args.data_dir / "minerva_math.jsonl")
    gsm8k = rows(args.data_dir / "gsm8k_test.jsonl")
    answers = [r["answer"] for r in math500]
    cases = {
        "MATH-500 solution vs its answer": ([r["solution"] for r in math500], answers),
        "MATH-500 solution vs the next row's answer": ([r["solution"] for r in math500], answers[1:] + answers[:1]),
        "Minerva Math solution vs its boxed answer": (
            [r["solution"] for r in minerva],
            [last_boxed(r["solution"]) or "" for r in minerva],
        ),
        "GSM8K test solution vs its #### answer": (
            [r["answer"] for r in gsm8k],
            [r["answer"].rsplit("####", 1)[1].strip() for r in gsm8k],
        ),
    }
    lines = ["| pair | rows | scored correct | ms per item |", "| --- | --- | --- | --- |"]
    for name, (completions, golds) in cases.items():
        start = time.perf_counter()
        rewards = math_verify_reward(completions, golds)
        ms = 1000 * (time.perf_counter() - start) / len(golds)
        lines.append(f"| {name} | {len(golds)} | {100 * sum(rewards) / len(golds):.1f}% | {ms:.1f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    lines += ["", "Reproduce: python benchmarks/reward_agreement.py " + " ".join(sys.argv[1:])]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
