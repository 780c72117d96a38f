"""One prepared look at a GPU machine: rollout speed, one RL step per algorithm, update MFU.

    python benchmarks/gpu.py --data-dir ../shared/data/math 2>&1 | tee gpu.txt    # < 8 min on one GPU
    python benchmarks/gpu.py --data-dir ../shared/data/math --quick               # about 3 min
    python benchmarks/gpu.py --data-dir ../shared/data/math --quick --cpu         # the script's own check

On a random-init model of the Qwen2.5-Math-1.5B shape (``tbrm.models.standin``: its memory and
compute, none of its skill; a random model almost never emits EOS, so every completion runs to
its budget), with the card's name in every table:

1. **rollout**: new tokens / s of ``rollout.engine=vllm`` (a colocated ``vllm.LLM``) against
   HF ``generate``, at batch 64 and 256, 256-token prompts, 512 new tokens, temperature 1;
2. **one RL step** of TBRM n=1, PPO n=1 and GRPO n=4 at the paper's batch (128 prompts x 2,048
   tokens) through the real ``run.py`` (``benchmarks/paper_step.py``), engine start included:
   the time split (rollout, reference, update) and the peak GPU memory;
3. **update MFU**: forward + backward + AdamW of the policy on 1,024-token sequences (bf16
   autocast, gradient checkpointing as the paper presets), as 6 x parameters x tokens over the
   card's dense bf16 peak.

``--quick`` shrinks each part (batch 64 only, 32 prompts x 512 tokens per step). Nothing here is a
test; ``docs/results.md`` keeps the figures with the command and the card.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout: the tables only

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
#: dense bf16 peak FLOP/s by card name (the vendors' data sheets, without sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def card() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no GPU)"


def peak_flops() -> float | None:
    name = card()
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def prompt_ids(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(vocab // 4, vocab, (batch, length), generator=gen)  # clear of the special tokens


def rollout_speed(model_dir: Path, batches: list[int], prompt_len: int, new: int, device: str) -> list[dict]:
    """New tokens / s of vLLM and of HF generate for the same random prompts (EOS ignored)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from tbrm.models.loading import load_model_and_tokenizer
    from tbrm.rollout.vllm_engine import VLLMEngine

    dtype = "bfloat16" if device == "cuda" else "float32"
    model, tokenizer = load_model_and_tokenizer(str(model_dir), dtype=dtype)
    model.to(device).eval()
    start = time.perf_counter()
    engine = VLLMEngine(model, tokenizer, {} if device == "cuda" else {"kv_cache_memory_bytes": 1 << 30})
    llm = engine.build()
    engine.sync()
    started = time.perf_counter() - start
    rows = []
    for batch in batches:
        ids = prompt_ids(batch, prompt_len, model.config.vocab_size)
        params = SamplingParams(temperature=1.0, max_tokens=new, min_tokens=new, ignore_eos=True, seed=0,
                                logprobs=0, detokenize=False)  # fmt: skip
        prompts = [TokensPrompt(prompt_token_ids=row.tolist()) for row in ids]
        llm.generate(prompts[:8], params, use_tqdm=False)  # warm-up
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        rows.append({"engine": "vllm", "batch": batch, "new tokens": tokens, "s": seconds, "start s": started})
        with torch.no_grad():
            inputs = ids.to(device)
            model.generate(inputs[:8], attention_mask=torch.ones_like(inputs[:8]), do_sample=True, max_new_tokens=8,
                           min_new_tokens=8, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
        tokens = (out.shape[1] - prompt_len) * batch
        rows.append({"engine": "hf generate", "batch": batch, "new tokens": tokens, "s": seconds, "start s": 0.0})
        print(json.dumps(rows[-2:]), flush=True)
    del llm, engine, model
    return rows


def update_mfu(model_dir: Path, batch: int, length: int, steps: int, device: str) -> dict:
    """Seconds per update step (forward + backward + AdamW) on ``batch`` x ``length`` tokens."""
    from tbrm.models.loading import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(model_dir), dtype="float32", gradient_checkpointing=True)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device == "cuda")
    ids = prompt_ids(batch, length, model.config.vocab_size).to(device)
    params = sum(p.numel() for p in model.parameters())
    times = []
    for _ in range(steps + 1):  # the first step pays for kernels' first launches
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    seconds = sorted(times[1:])[len(times[1:]) // 2]
    achieved = 6 * params * batch * length / seconds  # 2 forward + 4 backward FLOPs per parameter and token
    peak = peak_flops()
    mem = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")
    return {"tokens": batch * length, "s": seconds, "TFLOP/s": achieved / 1e12,
            "MFU": None if peak is None else achieved / peak, "peak GB": mem, "params": params}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/math")
    parser.add_argument("--quick", action="store_true", help="a shorter look: about 3 minutes")
    parser.add_argument("--cpu", action="store_true", help="check the script on the CPU (small shape, vLLM's CPU)")
    parser.add_argument("--parts", nargs="+", default=["rollout", "step", "mfu"], choices=["rollout", "step", "mfu"])
    parser.add_argument("--out", type=Path, default=ROOT / "logs/benchmarks/gpu")
    args = parser.parse_args()
    from paper_step import dapo_copy, run_preset, table

    from tbrm.models.standin import save_qwen2_standin

    device = "cpu" if args.cpu else "cuda"
    shape = "small" if args.cpu else "qwen2.5-math-1.5b"
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(tempfile.mkdtemp(prefix="standin-", dir=args.out))
    t0 = time.time()
    save_qwen2_standin(model_dir, shape, dtype="float32" if args.cpu else "bfloat16")
    print(f"# {card()}: {shape} stand-in built in {time.time() - t0:.0f} s", flush=True)
    lines = []
    if "rollout" in args.parts:
        batches = [64] if args.quick else [64, 256]
        new = 32 if args.cpu else 512
        rows = rollout_speed(model_dir, batches, 32 if args.cpu else 256, new, device)
        lines += [f"\n## Rollout: new tokens / s, {card()}\n",
                  "| engine | batch | new tokens / s | s | engine start s |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        lines += [f"| {r['engine']} | {r['batch']} | {r['new tokens'] / r['s']:.0f} | {r['s']:.1f} | "
                  f"{r['start s']:.1f} |" for r in rows]  # fmt: skip
        print("\n".join(lines), flush=True)
    if "step" in args.parts:
        prompts, tokens = (8, 16) if args.cpu else ((32, 512) if args.quick else (128, 2048))
        steps = 1 if args.quick else 2  # 2: the second step's split, after the engine's start
        step_args = argparse.Namespace(data_dir=args.data_dir.resolve(), prompts=prompts, max_new_tokens=tokens,
                                       steps=steps, cpu=args.cpu, shape=shape)  # fmt: skip
        train_file = dapo_copy(step_args.data_dir, args.out / "dapo_math500.jsonl")
        results = [run_preset(p, model_dir, train_file, step_args, args.out, extra=["rollout.engine=vllm"])
                   for p in ("tbrm_n1", "ppo_n1", "grpo_n4")]  # fmt: skip
        start = " (the step includes the engine's start)" if steps == 1 else ""
        lines += [f"\n## One RL step at {prompts} prompts x {tokens} tokens (rollout.engine=vllm), {card()}{start}\n",
                  table(results, step_args).rsplit("\nReproduce", 1)[0]]  # fmt: skip
        print(lines[-1], flush=True)
    if "mfu" in args.parts:
        batch, length = (2, 64) if args.cpu else (8 if args.quick else 16, 1024)
        r = update_mfu(model_dir, batch, length, 2 if args.quick or args.cpu else 5, device)
        mfu = "n/a (unknown card)" if r["MFU"] is None else f"{100 * r['MFU']:.1f}%"
        cells = f"{r['tokens']} | {r['s']:.2f} | {r['TFLOP/s']:.0f} | {mfu} | {r['peak GB']:.1f}"
        lines += [f"\n## Update MFU at {length}-token sequences, {card()}\n",
                  "| sequences | tokens | s / step | TFLOP/s | MFU | peak GB |",
                  "| --- | --- | --- | --- | --- | --- |", f"| {batch} | {cells} |"]  # fmt: skip
        print("\n".join(lines[-4:]), flush=True)
    lines.append("\nReproduce: python benchmarks/gpu.py " + " ".join(sys.argv[1:]))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
