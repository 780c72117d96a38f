"""Per-benchmark evaluation: greedy avg@1, sampled avg@k and unbiased pass@k, and their table.

Each benchmark is a :class:`tbrm.data.hub.MathSource` (hub name or local file); its rows are
rendered with the prompt template and scored by the evaluation's reward (Math-Verify for the math
sets). The protocol follows the TBRM paper's evaluation: greedy decoding for avg@1, ``n_samples``
completions at the sampling temperature for avg@k, and pass@k by the unbiased estimator
(Chen et al., 2021, Eq. 1). The same evaluation runs after training (``mode=eval``) and during
training at every Lightning validation (:class:`BenchmarkEvaluation`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L

from tbrm.data.hub import MathSource
from tbrm.eval.accuracy import evaluate_accuracy
from tbrm.rollout.engine import RolloutEngine, as_engine

log = logging.getLogger(__name__)

# the columns of a result row that are counts, not accuracies
COUNTS = ("problems", "skipped")


def with_local_files(benchmarks: dict[str, dict], local_dir: str | None) -> dict[str, dict]:
    """Benchmark settings where each one without a ``path`` reads ``<local_dir>/<name>.jsonl``.

    A missing file fails with the benchmark named and both fixes (another folder, or dropping it).
    """
    if not local_dir:
        return benchmarks
    out = {}
    for name, settings in benchmarks.items():
        settings = dict(settings)
        if not settings.get("path"):
            path = Path(local_dir) / f"{name}.jsonl"
            if not path.exists():
                raise FileNotFoundError(
                    f"eval.local_dir has no {path.name} for benchmark {name!r} ({path}); add the file, "
                    f"give eval.benchmarks.{name}.path=..., or drop it with ~eval.benchmarks.{name}."
                )
            settings["path"] = str(path)
        out[name] = settings
    return out


def load_benchmarks(
    benchmarks: dict[str, MathSource], *, template: str = "plain", tokenizer=None, skip_bad_rows: bool = False
) -> dict[str, tuple[list[dict], int]]:
    """``{name: (prompt records, skipped rows)}`` of each benchmark, rendered with ``template``."""
    return {name: source.records(template, skip_bad_rows, tokenizer) for name, source in benchmarks.items()}


def evaluate_benchmarks(
    model,
    tokenizer,
    benchmarks: dict[str, MathSource | tuple[list[dict], int]],
    reward_fn: Callable[[list[str], list[str]], list[float]],
    *,
    template: str = "plain",
    skip_bad_rows: bool = False,
    n_samples: int = 4,
    samples: dict[str, int] | None = None,
    k: tuple[int, ...] = (1, 4),
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    batch_size: int = 64,
    engine: str | RolloutEngine = "compact",
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Per benchmark: greedy ``avg@1``; with n sampled completions per problem (``n_samples``, or
    ``samples[name]``), ``avg@n`` and ``pass@k`` for each ``k``; ``score``, the number the TBRM
    paper reports (``avg@n`` where sampled, else ``avg@1``); ``problems`` and ``skipped`` rows.
    A ``mean`` row averages each column over the benchmarks that have it and sums the counts.

    ``benchmarks`` maps names to sources, or to ``(records, skipped)`` already loaded by
    :func:`load_benchmarks` (evaluation during training loads them once).
    """
    samples = dict(samples or {})  # entries of benchmarks not evaluated now are unused
    for name in benchmarks:
        n = samples.get(name, n_samples)
        if n and any(kk > n for kk in k):
            raise ValueError(
                f"eval.k {list(k)} asks for more than the {n} samples per problem of {name!r}; "
                "lower eval.k or raise eval.n_samples / eval.samples."
            )
    engine = as_engine(engine, model, tokenizer)  # one engine for every benchmark
    results = {}
    for name, source in benchmarks.items():
        if progress:
            progress(name)
        if isinstance(source, MathSource):
            records, skipped = source.records(template, skip_bad_rows, tokenizer)
        else:
            records, skipped = source
        n = samples.get(name, n_samples)
        metrics = evaluate_accuracy(
            model,
            tokenizer,
            records,
            reward_fn,
            n_samples=n,
            k=tuple(k) if n else (),
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            engine=engine,
        )
        row = {"avg@1": metrics["accuracy"]}
        if n:
            row[f"avg@{n}"] = metrics["accuracy_sampled"]
            row.update({key: value for key, value in metrics.items() if key.startswith("pass@")})
        row["score"] = row[f"avg@{n}"] if n else row["avg@1"]
        results[name] = {**row, "problems": float(len(records)), "skipped": float(skipped)}
    if results:
        rows = list(results.values())
        mean = {key: [r[key] for r in rows if key in r] for key in _columns(results)}
        results["mean"] = {key: sum(values) / len(values) for key, values in mean.items()}
        results["mean"].update({key: sum(r[key] for r in rows) for key in COUNTS})
    return results


def _columns(results: dict[str, dict[str, float]]) -> list[str]:
    """The accuracy columns of all rows, in first-seen order, ``score`` last."""
    keys = list(dict.fromkeys(key for row in results.values() for key in row if key not in COUNTS))
    return [key for key in keys if key != "score"] + (["score"] if "score" in keys else [])


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per benchmark and the unweighted mean, accuracies in percent,
    ``-`` where a benchmark has no such column (a ``skipped`` column appears when rows were skipped)."""
    if not results:
        return "(no benchmarks)"
    keys = _columns(results)
    counts = ["problems"] + (["skipped"] if any(row.get("skipped") for row in results.values()) else [])
    lines = [
        "| benchmark | " + " | ".join(counts + keys) + " |",
        "| --- " * (len(keys) + len(counts) + 1) + "|",
    ]
    for name, row in results.items():
        cells = [str(int(row[key])) for key in counts]
        cells += [f"{100 * row[key]:.1f}" if key in row else "-" for key in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flatten(results: dict[str, dict[str, float]], prefix: str = "eval") -> dict[str, float]:
    """``{"<prefix>/<benchmark>/<metric>": value}``: the names logged to W&B and CSV (``eval/`` by
    ``mode=eval``, ``val/`` during training)."""
    return {f"{prefix}/{name}/{key}": value for name, row in results.items() for key, value in row.items()}


class BenchmarkEvaluation(L.Callback):
    """The benchmark evaluation at every Lightning validation (before training, every
    ``val_check_interval`` steps, at the end), logged as ``val/<benchmark>/<metric>`` at the
    trainer's step. Rank zero evaluates; other ranks wait. ``history`` keeps ``(step, results)``.

    Args:
        benchmarks: ``{name: MathSource}`` (loaded once, at the first validation, with the
            policy's tokenizer).
        reward_fn: the scorer (Math-Verify for the math sets).
        template, skip_bad_rows: how rows become prompts (see :class:`tbrm.data.hub.MathSource`).
        **settings: ``n_samples, k, temperature, top_p, max_new_tokens, batch_size`` of
            :func:`evaluate_benchmarks`.
    """

    def __init__(
        self,
        benchmarks: dict[str, MathSource],
        reward_fn,
        *,
        template: str = "plain",
        skip_bad_rows: bool = False,
        **settings,
    ) -> None:
        self.benchmarks = benchmarks
        self.reward_fn = reward_fn
        self.template = template
        self.skip_bad_rows = skip_bad_rows
        self.settings = settings
        self.records: dict[str, tuple[list[dict], int]] | None = None
        self.history: list[tuple[int, dict]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.is_global_zero:
            if self.records is None:
                self.records = load_benchmarks(
                    self.benchmarks,
                    template=self.template,
                    tokenizer=pl_module.tokenizer,
                    skip_bad_rows=self.skip_bad_rows,
                )
            model, tokenizer = pl_module.policy, pl_module.tokenizer
            settings = {**self.settings, "engine": pl_module.engine}  # the training engine, its weights synced
            results = evaluate_benchmarks(model, tokenizer, self.records, self.reward_fn, **settings)
            log.info("benchmarks at step %d:\n%s", trainer.global_step, format_table(results))
            self.history.append((trainer.global_step, results))
            for logger in trainer.loggers:
                logger.log_metrics(flatten(results, "val"), step=trainer.global_step)
        trainer.strategy.barrier("benchmark_evaluation")
