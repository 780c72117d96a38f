"""Where a rollout's time goes: HF generate against the compact loop, one saving at a time.

    python benchmarks/rollout.py                       # warm start and random init, 8 prompts x 4
    python benchmarks/rollout.py --model-init warm --batches 20 --ops 12

For each model (the embedded default's warm start, whose completions run to about 42 tokens, and
a random-init copy, whose completions end at a random EOS), the same prompt batches go through:
``hf`` (``model.generate``), the compact loop with the model's forward and no row dropping
(``preallocated``: only the KV cache differs), with row dropping (``+ compaction``), and with the
lean Llama step (``+ lean step``: ``rollout.engine=compact``, the default), and with that step
compiled ahead of time (``compiled``: ``rollout.engine=compiled``; loading it, or compiling it the
first time on a machine, happens in the warm-up, timed apart), and, where vLLM is installed (its
CPU build here: docs/vllm.md), a colocated ``vllm.LLM`` (``vllm``: ``rollout.engine=vllm``, built
once per model in the warm-up, its weights synced before the first batch). Every compact variant prefills a
group's prompt once. Prints the median seconds per batch, the decode steps run and the
row-steps computed, then the top operators of one batch of each engine (torch.profiler, self
CPU time; ``compiled``'s decode steps are one C++ call each, which the profiler does not break
down).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import torch

os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout: the tables only

VARIANTS = {  # label: (engine, decode options)
    "hf": ("hf", {}),
    "preallocated": ("compact", {"compact_fraction": None, "lean": False}),
    "+ compaction": ("compact", {"lean": False}),
    "+ lean step": ("compact", {}),
    "compiled": ("compiled", {}),
    "vllm": ("vllm", {}),
}
VLLM_OPTIONS = {"kv_cache_memory_bytes": 256 << 20}  # the KV cache these batches need, not 30% of RAM


def load(which: str):
    import sys
    import tempfile
    from pathlib import Path

    from tbrm.models.loading import load_model_and_tokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from vs_trl import save_model

    path = Path(tempfile.mkdtemp()) / "model"
    save_model(path, which)
    return load_model_and_tokenizer(str(path))


def run(model, tokenizer, batches, engine, options, n):
    """Time ``batches`` through ``engine`` (a name, or an engine built once: vLLM's)."""
    import tbrm.rollout.compact as compact
    from tbrm.rollout import generate_rollouts
    from tbrm.rollout.decode import decode

    compact.decode = functools.partial(decode, **options)  # the engines' loop with this run's options
    try:
        times, steps, row_steps = [], [], []
        for prompts, answers in batches:
            start = time.perf_counter()
            out = generate_rollouts(model, tokenizer, prompts, answers, n=n, engine=engine)
            times.append(time.perf_counter() - start)
            steps.append(out.completion_ids.shape[1])
            row_steps.append(int(out.completion_mask.sum()))
        return times, steps, row_steps
    finally:
        compact.decode = decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-init", nargs="+", default=["warm", "random"], choices=["warm", "random"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--batches", type=int, default=12, help="prompt batches timed (median reported)")
    parser.add_argument("--ops", type=int, default=8, help="top operators shown per engine (0: none)")
    parser.add_argument("--engines", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="the variants timed (hf is the baseline; vllm only where it is installed)")  # fmt: skip
    args = parser.parse_args()
    from tbrm.rollout.engine import vllm_installed

    variants = {label: VARIANTS[label] for label in dict.fromkeys(["hf", *args.engines])}
    if "vllm" in variants and not vllm_installed():
        print("vllm: not installed here, left out (docs/vllm.md)\n")
        del variants["vllm"]

    from tbrm.data.arithmetic import ArithmeticTask

    rows = ArithmeticTask().splits()["train"]
    batches = [
        ([r["prompt"] for r in rows[i : i + args.prompts]], [r["answer"] for r in rows[i : i + args.prompts]])
        for i in range(0, args.batches * args.prompts, args.prompts)
    ]
    print(f"{args.prompts} prompts x {args.n} completions, 48 new tokens, median of {args.batches} batches, CPU.\n")
    print("| model | engine | s / batch | vs hf | decode steps | completion tokens | tokens / s | warm-up s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    profiles = []
    for which in args.model_init:
        model, tokenizer = load(which)
        model.eval()
        warmup, engines = {}, {}
        for label, (engine, options) in variants.items():
            start = time.perf_counter()
            if engine == "vllm":  # one engine per model, its start timed in the warm-up
                from tbrm.rollout.engine import make_engine

                engine = engines[label] = make_engine("vllm", model, tokenizer, VLLM_OPTIONS)
            run(model, tokenizer, batches[:2], engine, options, args.n)  # warm-up (and loading the compiled step)
            warmup[label] = time.perf_counter() - start
        # batch by batch, every engine in turn from the same seed: a slow spell hits all alike
        results = {label: ([], [], []) for label in variants}
        for index, batch in enumerate(batches):
            for label, (engine, options) in variants.items():
                torch.manual_seed(index)
                measured = run(model, tokenizer, [batch], engines.get(label, engine), options, args.n)
                for column, value in zip(results[label], measured, strict=True):
                    column += value
        base = statistics.median(results["hf"][0])
        for label, (times, steps, tokens) in results.items():
            median = statistics.median(times)
            print(
                f"| {which} | {label} | {median:.3f} | {median / base:.2f}x | {statistics.mean(steps):.1f} "
                f"| {statistics.mean(tokens):.0f} | {statistics.mean(tokens) / median:.0f} | {warmup[label]:.1f} |"
            )
        for label in [label for label in ("hf", "+ lean step", "compiled") if label in variants]:
            if args.ops:
                engine, options = VARIANTS[label]
                with torch.profiler.profile() as prof:
                    run(model, tokenizer, batches[:1], engine, options, args.n)
                profiles.append((which, label, prof))
    for which, label, prof in profiles:
        print(f"\n{which}, {label}: top operators of one batch (self CPU)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))
    inits, names = " ".join(args.model_init), " ".join(variants)
    print(f"\nReproduce: python benchmarks/rollout.py --model-init {inits} --batches {args.batches} --prompts "
          f"{args.prompts} --n {args.n} --engines {names}")  # fmt: skip


if __name__ == "__main__":
    main()
