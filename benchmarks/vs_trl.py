"""Our GRPO against TRL's GRPOTrainer on the same model, prompts, reward, group size and lengths,
plus our TBRM n=1 and PPO n=1 at the same number of completions per step.

    pip install -e ".[bench]"                       # trl
    python benchmarks/vs_trl.py                      # 32 completions per step, 48 new tokens
    python benchmarks/vs_trl.py --model-init random  # a random-init model instead of the warm start
    python benchmarks/vs_trl.py --plain              # ours without its savings (HF generate, ...)

Each trainer runs in its own child process, one after the other (so its peak RSS is its own),
and the whole sequence runs ``--repeats`` times in alternating order: figures are medians over
the rounds, ratios the median (and range) of each round's own ratio, since this machine's speed
drifts within minutes. All run one model saved with save_pretrained: the embedded default's
warm start (2.6M-parameter Llama, character tokenizer; the model ``python run.py`` trains), or
with ``--model-init random`` a random-init copy of it. ``--rollout-engine`` picks our engines'
``rollout.engine`` (``auto``, the default, and ``compiled`` load the compiled decode step in the
first warm-up step, shown as "first step", and compile it there if this machine has never
compiled it; ``auto`` runs ``compact`` where no C++ compiler is found).
Results and profiles: benchmarks/README.md. Settings shared by both GRPOs: groups of ``--n``,
beta 0 (TRL's default: no reference model), clip 0.2, group-std advantages, token-mean loss
(TRL's ``dapo``), one update per generation batch, temperature 1.0, AdamW at lr 1e-5, float32
on CPU.
A step's time is wall-clock from the start of the step (generation included) to the optimizer
step; the table shows the median over ``--steps`` steps after ``--warmup`` steps, and of the
completion tokens generated per second of step (completions x their mean length, which each
trainer logs, / step time). Peak tensor
memory (ours only) comes from a second child that profiles one warm-up and one step with
torch.profiler's memory timeline: parameters (reference and critic included), gradients,
optimizer states, activations and temporaries. Peak RSS is mostly libraries at this size.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ["trl-grpo", "grpo", "tbrm", "ppo"]
ROOT = Path(__file__).resolve().parents[1]


def save_model(path: Path, which: str) -> None:
    """``random``: a random-init copy of the embedded default; ``warm``: the embedded default's
    warm start (the SFT'd model ``python run.py`` trains, built into the cache if missing)."""
    from tbrm.data.arithmetic import ArithmeticTask
    from tbrm.models.loading import load_model_and_tokenizer
    from tbrm.models.tiny import build_char_tokenizer, build_tiny_model

    if which == "random":
        tokenizer = build_char_tokenizer(ArithmeticTask().alphabet())
        model = build_tiny_model(tokenizer)
    else:
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate

        from tbrm.models.policy import resolve_policy

        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.root_dir={ROOT}"])
        source = resolve_policy(cfg.model, instantiate(cfg.data.task), cfg.data.task, cfg.paths.cache_dir)
        model, tokenizer = load_model_and_tokenizer(source)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


PHASES = ("perf/rollout_s", "perf/ref_s", "perf/update_s")
LENGTH = "completion_len"  # mean completion length of each step (train/response_length; TRL's completions/mean_length)


def run_ours(engine: str, args) -> tuple[list[float], dict[str, list[float]]]:
    import lightning as L

    from tbrm.data.arithmetic import ArithmeticTask
    from tbrm.data.datamodule import PromptDataModule
    from tbrm.module import RLModule
    from tbrm.objectives import GRPO, PPO, TBRM
    from tbrm.optim import adamw, warmup_cosine_schedule
    from tbrm.rewards import exact_number_reward

    L.seed_everything(0)  # the same prompt order and draws for every engine (TRL: seed=0)
    n = args.n if engine == "grpo" else 1
    skip = not args.plain
    objective = {
        "grpo": lambda: GRPO(group_size=n, beta=0.0, loss_agg_mode="token-mean", skip_zero_advantage=skip),
        "tbrm": lambda: TBRM(beta=0.05),
        "ppo": lambda: PPO(beta=0.05),
    }[engine]()
    module = RLModule(
        str(args.model),
        objective,
        exact_number_reward,
        rollout={
            "n": n,
            "temperature": 1.0,
            "top_p": 1.0,
            "max_new_tokens": args.max_new_tokens,
            "engine": "hf" if args.plain else args.rollout_engine,
        },
        optimizer=functools.partial(adamw, lr=1e-5, betas=(0.9, 0.999)),
        scheduler=functools.partial(warmup_cosine_schedule, warmup_steps=0),
        update={"grad_clip": 1.0, "split_cost_tokens": 1e12 if args.plain else 256},
    )
    times: list[float] = []
    phases: dict[str, list[float]] = {k: [] for k in (*PHASES, LENGTH)}

    class Timer(L.Callback):
        def on_train_batch_start(self, *a):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, *a):
            times.append(time.perf_counter() - self.t0)
            for key in PHASES:
                phases[key].append(float(trainer.callback_metrics[key]))
            phases[LENGTH].append(float(trainer.callback_metrics["train/response_length"]))

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Timer()],
    )
    task = ArithmeticTask(num_val=8, num_test=8)
    datamodule = PromptDataModule(task, batch_size=args.completions // n, val_batch_size=8)
    if not args.profile_memory:
        trainer.fit(module, datamodule=datamodule)
        return times, phases
    from torch.profiler import ProfilerActivity, profile

    if args.rollout_engine in ("auto", "compiled") and not args.plain:  # compile (or load) outside the profiler
        rows = task.splits()["train"][: args.completions // n]
        module.engine.generate([r["prompt"] for r in rows], [r["answer"] for r in rows], n=n,
                               max_new_tokens=args.max_new_tokens)  # fmt: skip
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        trainer.fit(module, datamodule=datamodule)
    return times, {"peak_tensor_gb": [peak_tensor_bytes(prof) / 1e9]}


def peak_tensor_bytes(prof) -> float:
    """Peak of what torch holds over the profiled steps (parameters, gradients, optimizer states,
    activations, temporaries), from the profiler's memory timeline."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return float(max(sum(s) for s in sizes))


def run_trl(args) -> list[float]:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tbrm.data.arithmetic import ArithmeticTask
    from tbrm.rewards import exact_number_reward

    task = ArithmeticTask(num_val=8, num_test=8)
    rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in task.splits()["train"]]
    times: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    def reward(completions, answer, **kwargs):
        return exact_number_reward(completions, answer)

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=args.completions,  # TRL counts completions, not prompts
        num_generations=args.n,
        max_completion_length=args.max_new_tokens,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        temperature=1.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(args.model),
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(args.model),
        callbacks=[Timer()],
    )
    trainer.train()
    return times, {LENGTH: lengths}


def child(args) -> None:
    from tbrm.utils import peak_mem_gb

    times, phases = run_trl(args) if args.engine == "trl-grpo" else run_ours(args.engine, args)
    if args.profile_memory:
        print("RESULT " + json.dumps({"engine": args.engine, "peak_tensor_gb": phases["peak_tensor_gb"][0]}))
        return
    steady = times[args.warmup :]
    lengths = phases.pop(LENGTH)[args.warmup :]
    rates = [length * args.completions / t for length, t in zip(lengths, steady, strict=True)]
    record = {
        "engine": args.engine,
        "step_s": statistics.median(steady),
        "first_step_s": times[0],
        "steps": len(steady),
        "peak_rss_gb": peak_mem_gb("cpu"),  # the process's max RSS
        "tokens_per_s": statistics.median(rates),  # completion tokens generated per second of step
        **{key: statistics.median(values[args.warmup :]) for key, values in phases.items()},
    }
    print("RESULT " + json.dumps(record), flush=True)


def run_child(cmd: list[str], engine: str) -> dict | None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"{engine} failed ({proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def command(engine: str, model: Path, args) -> list[str]:
    cmd = [sys.executable, __file__, "--engine", engine, "--model", str(model)]
    cmd += [f"--completions={args.completions}", f"--n={args.n}", f"--max-new-tokens={args.max_new_tokens}"]
    return cmd + (["--plain"] if args.plain else [f"--rollout-engine={args.rollout_engine}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completions", type=int, default=32, help="completions per step (all engines)")
    parser.add_argument("--n", type=int, default=4, help="GRPO group size (TBRM and PPO use 1)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of every engine, in alternating order (medians reported)"
    )
    parser.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    parser.add_argument(
        "--model-init",
        choices=["warm", "random"],
        default="warm",
        help="warm: the embedded default's warm start (rewards vary, completions run to ~42 tokens); "
        "random: a random-init copy (every reward 0, completions end at a random EOS)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="our engines without this project's savings (the before of benchmarks/README.md): HF generate, "
        "one micro-batch per update, no skipped zero-advantage rows",
    )
    parser.add_argument(
        "--rollout-engine",
        choices=["auto", "compact", "compiled", "hf"],
        default="auto",
        help="our engines' rollout.engine (auto, the default: compiled where a C++ compiler is found, compact "
        "otherwise; compiled: the decode step compiled ahead of time, loaded in the first warm-up step; "
        "--plain: hf)",
    )
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--profile-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        return child(args)

    rounds: list[dict[str, dict]] = []
    memory: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        save_model(model, args.model_init)
        for index in range(args.repeats):
            # alternate the order, so that a slow spell of the machine does not always hit one engine
            order = args.engines if index % 2 == 0 else args.engines[::-1]
            rounds.append({})
            for engine in order:
                timing = [f"--steps={args.steps}", f"--warmup={args.warmup}"]
                timed = run_child(command(engine, model, args) + timing, engine)
                if timed is not None:
                    rounds[-1][engine] = timed
                    print(f"round {index + 1} {engine}: {timed}", file=sys.stderr)
        for engine in args.engines:
            if engine != "trl-grpo":  # another child: one warm-up and one profiled step
                profiled = ["--steps=1", "--warmup=1", "--profile-memory"]
                measured = run_child(command(engine, model, args) + profiled, engine)
                memory[engine] = measured["peak_tensor_gb"] if measured else float("nan")

    engines = [e for e in args.engines if all(e in r for r in rounds)]
    results = {
        e: {k: statistics.median(r[e][k] for r in rounds) for k in rounds[0][e] if k != "engine"} for e in engines
    }

    def ratios(num: str, den: str, key: str = "step_s") -> str:
        """The median over rounds of num / den (each round's pair ran minutes apart), and its range."""
        values = sorted(r[num][key] / r[den][key] for r in rounds)
        spread = f" ({values[0]:.2f}-{values[-1]:.2f})" if len(values) > 1 else ""
        return f"{statistics.median(values):.2f}x{spread}"

    print(
        f"\n{args.completions} completions per step, groups of {args.n} (TBRM/PPO: 1), {args.max_new_tokens} new "
        f"tokens; each figure the median over {args.repeats} round(s) of the median of {args.steps} steps after "
        f"{args.warmup}; ratios: median (range) of the rounds' ratios; one process per engine per round, CPU.\n"
    )
    header = ["engine", "s / step", "completion tokens / s", "first step s", "rollout s", "reference s", "update s",
              "tensor GB", "RSS GB", "step / TRL", "RSS / TRL"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    base = "trl-grpo" if "trl-grpo" in results else None
    for engine, r in results.items():
        ratio = ratios(engine, base) if base else "-"
        mem = ratios(engine, base, "peak_rss_gb") if base else "-"
        split = " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in PHASES)
        tensor = f"{memory[engine]:.3f}" if engine in memory else "-"
        first = f"{r['first_step_s']:.2f}"
        rss = f"{r['peak_rss_gb']:.2f}"
        rate = f"{r['tokens_per_s']:.0f}"
        print(f"| {engine} | {r['step_s']:.3f} | {rate} | {first} | {split} | {tensor} | {rss} | {ratio} | {mem} |")
    if "tbrm" in results and "ppo" in results:
        tensors = memory["tbrm"] / memory["ppo"]
        print(
            f"\nTBRM n=1 / PPO n=1: step time {ratios('tbrm', 'ppo')}, peak tensor memory {tensors:.2f}x, "
            f"peak RSS {ratios('tbrm', 'ppo', 'peak_rss_gb')}"
        )
    flags = f"--model-init {args.model_init} --completions {args.completions} --n {args.n} --steps {args.steps}"
    flags += f" --repeats {args.repeats}"
    flags += " --plain" if args.plain else f" --rollout-engine {args.rollout_engine}"
    print(f"\nReproduce: python benchmarks/vs_trl.py {flags}")


if __name__ == "__main__":
    main()
