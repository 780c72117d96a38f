"""Rollout engines behind one interface, chosen by ``rollout.engine``.

An engine samples ``n`` completions per prompt from the policy and returns a
``tbrm.rollout.batch.RolloutBatch``; after each RL step's optimizer steps the module calls ``on_weights_updated``,
so an engine that holds its own copy of the weights (vLLM) can refresh it before the next
rollout. ``generate`` tokenizes the prompts, puts the model in eval mode and builds the batch; an
engine implements ``sample``. The engines here sample from the policy's live weights and need no refresh:

    compact    tbrm.rollout.compact   our decode loop (preallocated KV cache, finished rows leave)
    compiled   tbrm.rollout.compiled  the same loop, its Llama-family decode step compiled ahead of time
    auto       tbrm.rollout.compiled  compiled where it can, compact otherwise (the default)
    hf         tbrm.rollout.hf        plain ``model.generate``
    vllm       tbrm.rollout.vllm_engine  a colocated ``vllm.LLM``, its weights loaded from the policy
                                         before each rollout that follows an update

``auto`` is vLLM when a CUDA device is there and vLLM is installed (``resolve_engine``).
A new engine is one file with a ``RolloutEngine`` subclass and one entry in ``ENGINES``; the
entry is an import path, so an engine's own dependencies load only when it is chosen.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from abc import ABC, abstractmethod

import torch

from tbrm.rollout.batch import RolloutBatch, RolloutStats, finish_batch

log = logging.getLogger(__name__)

#: rollout.engine -> "module:class"
ENGINES = {
    "auto": "tbrm.rollout.compiled:AutoEngine",
    "compact": "tbrm.rollout.compact:CompactEngine",
    "compiled": "tbrm.rollout.compiled:CompiledEngine",
    "hf": "tbrm.rollout.hf:HFEngine",
    "vllm": "tbrm.rollout.vllm_engine:VLLMEngine",
}
HELP = (
    "auto (compiled where it can, compact otherwise), compact (the lean loop), compiled (the lean loop with its "
    "decode step compiled ahead of time), hf (model.generate) or vllm (a colocated vllm.LLM)"
)


class RolloutEngine(ABC):
    """Samples completions from ``model`` (the policy, a Hugging Face causal LM) for ``tokenizer``."""

    def __init__(self, model, tokenizer, options: dict | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer  # options: the engine's own settings (vLLM's; others need none)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        answers: list[str],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 48,
        greedy: bool = False,
    ) -> RolloutBatch:
        """``n`` completions per prompt (rows ``i*n .. i*n+n-1`` belong to ``prompts[i]``), with the
        behaviour log-probs of the distribution sampled from (after temperature and top-p)."""
        model = self.model
        device = next(model.parameters()).device
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        was_training = model.training
        model.eval()
        prompt_ids, prompt_mask = (enc[key].repeat_interleave(n, 0) for key in ("input_ids", "attention_mask"))
        try:
            out = self.sample(enc, prompt_ids, prompt_mask, n, temperature, top_p, max_new_tokens, greedy)
        finally:
            model.train(was_training)
        return finish_batch(self.tokenizer, prompts, answers, n, prompt_ids, prompt_mask, *out)

    @abstractmethod
    def sample(
        self, enc, prompt_ids, prompt_mask, n, temperature, top_p, max_new_tokens, greedy
    ) -> tuple[torch.Tensor, torch.Tensor, RolloutStats | None]:
        """The engine's own sampling (the model in eval mode), from the tokenized prompts ``enc``
        or the same rows repeated ``n`` times (``prompt_ids``, ``prompt_mask``): the completion ids
        and the behaviour log-probs, (rows, steps), and the ``RolloutStats`` it recorded (or None).
        ``generate`` masks what follows each row's first EOS and decodes the texts."""

    def on_weights_updated(self) -> None:
        """The policy's weights changed; an engine with its own copy refreshes it here (these sample
        from the live weights: nothing to do)."""
        return None


def engine_class(name: str) -> type[RolloutEngine]:
    """The engine registered as ``name``, or a ValueError naming the choices."""
    if name not in ENGINES:
        raise ValueError(f"rollout.engine={name!r} is not one of {tuple(ENGINES)}; use {HELP}.")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def vllm_installed() -> bool:
    """Whether ``import vllm`` would find the package (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def resolve_engine(name: str, cuda: bool | None = None) -> str:
    """The engine ``name`` stands for: ``auto`` is ``vllm`` on a CUDA device with vLLM installed
    (``cuda`` None: whether one is there), our decode loop otherwise; one log line says which."""
    if name != "auto":
        return name
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda and vllm_installed():
        log.info("rollout.engine=auto: vllm (a CUDA device and vLLM are here)")
        return "vllm"
    why = "vLLM is not installed" if cuda else "no CUDA device: our decode loop is the fastest there"
    log.info("rollout.engine=auto: our decode loop, compiled where it can (%s)", why)
    return "auto"


def make_engine(name: str, model, tokenizer, options: dict | None = None, cuda: bool | None = None) -> RolloutEngine:
    """An engine ``name`` (``resolve_engine``) sampling from ``model``; ``options``: ``rollout.vllm``."""
    return engine_class(resolve_engine(name, cuda))(model, tokenizer, options)


def as_engine(engine: str | RolloutEngine, model, tokenizer) -> RolloutEngine:
    """``engine`` itself, or a new engine of that name sampling from ``model`` (build an engine
    once and pass it where many calls follow: a vLLM engine is built at its first rollout)."""
    return engine if isinstance(engine, RolloutEngine) else make_engine(engine, model, tokenizer)


def generate_rollouts(
    model,
    tokenizer,
    prompts: list[str],
    answers: list[str],
    *,
    engine: str | RolloutEngine = "compact",
    **sampling,
) -> RolloutBatch:
    """One call of ``as_engine(engine, model, tokenizer).generate(prompts, answers, **sampling)``
    (``n``, ``temperature``, ``top_p``, ``max_new_tokens``, ``greedy``)."""
    return as_engine(engine, model, tokenizer).generate(prompts, answers, **sampling)
