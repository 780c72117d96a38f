"""One decode step of a Llama-family model as a pure tensor function, eager or compiled.

Below a few hundred million parameters, and on CPU, a decode step of a Hugging Face model costs
more in Python and small-op dispatch (module calls, mask construction, a six-op RMSNorm, the
cache's bookkeeping) than in arithmetic (``benchmarks/README.md``). ``LeanStep`` runs the same
computation as the model's ``forward`` for one new token per row:

- on the model's weights as they are when the rollout starts, packed once per rollout (the
  q/k/v and gate/up matrices concatenated, every matrix transposed for a plain matrix product);
  a rollout never spans an optimizer step, so it decodes the current policy, and the packed
  copy (the size of the decoder layers) is freed when the rollout ends;
- against a KV cache held as two tensors, ``keys`` and ``values`` of shape
  (layers, rows, kv_heads, positions, head_dim); the step reads them and returns the new
  token's keys and values rather than writing them, so it is a pure function of its inputs;
- with the new token attending to itself through a separate score, merged into the same
  softmax as the cached positions (no concatenation of the cache).

A pure function with no Python state is what ``torch.export`` captures whole:
``rollout.engine=compiled`` compiles it ahead of time with AOTInductor, with dynamic shapes (any
rows, cache length and capacity), once per machine and model architecture (the weights are
inputs, not constants), in a child process; every later process loads the package from disk
(``compiled_step``). Its generated CPU kernels fuse the norms, rotary embedding and SwiGLU, and
a decode step is one C++ call: no Python between its kernels, no tracing and no guards.
``rollout.engine=compact`` runs the same function eagerly.

It covers the decoder layout shared by Llama, Mistral (without a sliding window), Qwen2 and
Qwen3: pre-norm RMSNorm, rotary position embedding of the default type, grouped-query attention
with optional q/k/v biases and optional per-head q/k RMSNorm (Qwen3), SwiGLU MLP.
``LeanStep.for_model`` returns None for anything else, and the prompt's prefill always goes
through ``forward``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
log = logging.getLogger(__name__)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: ``weight * (x * rsqrt(mean(x^2) + eps))``, the normalisation in float32 (one
    fused ``rms_norm`` for float32 inputs; lower precisions cast back before the weight, as HF)."""
    if x.dtype == torch.float32 and not torch.compiler.is_compiling():
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, eager: bool) -> torch.Tensor:
    """The rotary embedding ``x * cos + rotate_half(x) * sin`` (HF's ``apply_rotary_pos_emb``),
    with ``rotate_half(x) * sin == swap_halves(x) * sin_signed`` and ``sin_signed = [-sin_1, sin_2]``.
    Eagerly one flip and one multiply-add; for export, the concatenation Inductor fuses best."""
    half = x.shape[-1] // 2
    if eager:
        return torch.addcmul(x * cos, x.unflatten(-1, (2, half)).flip(-2).flatten(-2), sin_signed)
    return x * cos + torch.cat((x[..., half:], x[..., :half]), -1) * sin_signed


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6))


def _plain_linears(layer) -> bool:
    """Every projection is a plain ``nn.Linear`` (an adapter such as LoRA wraps them: its extra
    computation would be skipped by ``F.linear``, so such a model takes ``forward``)."""
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return all(type(p) is torch.nn.Linear for p in projections)


def step(
    params: dict,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    cached: int,
    *,
    heads: int,
    kv_heads: int,
    scaling: float,
    write: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Next-token logits (rows, vocab) for ``tokens`` (rows,) at ``positions`` (rows,), against
    the first ``cached`` positions of the cache buffers ``keys`` / ``values`` (layers, rows,
    kv_heads, capacity, head_dim); ``bias`` (rows, capacity) is 0 where attended and -inf on
    padding.

    Pure (``write`` False, what ``torch.export`` captures): the cache is only read, and the new
    token's keys and values (layers, rows, kv_heads, head_dim) are returned for the caller to
    append. Attention is ``softmax([q.K^T, q.k_new] * scaling + [bias, 0]) . [V; v_new]``, the
    new token's own score merged into the softmax. With ``write`` (the eager step) each layer
    writes its new keys and values at position ``cached`` first and attends over ``cached + 1``
    positions with one ``scaled_dot_product_attention`` (fewer operators); it returns
    ``(logits, None, None)``. Both compute what ``forward`` computes after appending the token.
    """
    rows, dim = tokens.shape[0], keys.shape[-1]
    group = heads // kv_heads
    joint = heads + kv_heads  # q and k heads
    hidden = F.embedding(tokens, params["embed"])
    cos, sin = params["cos"][positions][:, None], params["sin_signed"][positions][:, None]  # (rows, 1, dim)
    end = cached + 1 if write else cached
    keys, values, bias = keys[:, :, :, :end], values[:, :, :, :end], bias[:, :end]
    new_keys, new_values = [], []
    for i, p in enumerate(params["layers"]):
        x = _rms(hidden, p["input_norm"], p["input_eps"])
        qkv = x @ p["qkv"] if p["qkv_bias"] is None else torch.addmm(p["qkv_bias"], x, p["qkv"])
        q, k, v = (
            qkv[:, a * dim : b * dim].view(rows, b - a, dim)
            for a, b in ((0, heads), (heads, joint), (joint, joint + kv_heads))
        )
        if p["q_norm"] is not None:
            q, k = _rms(q, p["q_norm"], p["qk_eps"]), _rms(k, p["k_norm"], p["qk_eps"])
        if write and p["q_norm"] is None:  # eager: q and k are adjacent in qkv, rotated in one go
            qk = _rotate(qkv[:, : joint * dim].view(rows, joint, dim), cos, sin, eager=True)
            q, k = qk[:, :heads], qk[:, heads:]
        else:
            q, k = _rotate(q, cos, sin, eager=write), _rotate(k, cos, sin, eager=write)
        q = q.reshape(rows, kv_heads, group, dim)
        if write:
            keys[i, :, :, cached], values[i, :, :, cached] = k, v
            out = F.scaled_dot_product_attention(q, keys[i], values[i], attn_mask=bias[:, None, None], scale=scaling)
        else:
            new_keys.append(k)
            new_values.append(v)
            scores = torch.matmul(q, keys[i].transpose(-1, -2)) * scaling + bias[:, None, None]
            own = (q * k[:, :, None]).sum(-1, keepdim=True) * scaling
            weights = torch.cat((scores, own), -1).softmax(-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(weights[..., :-1], values[i]) + weights[..., -1:] * v[:, :, None]
        hidden = torch.addmm(hidden, out.reshape(rows, heads * dim), p["o"])
        x = _rms(hidden, p["post_norm"], p["post_eps"])
        gate_up = x @ p["gate_up"]
        inner = gate_up.shape[-1] // 2
        hidden = torch.addmm(hidden, F.silu(gate_up[:, :inner]) * gate_up[:, inner:], p["down"])
    logits = F.linear(_rms(hidden, params["norm"], params["norm_eps"]), params["head"], params["head_bias"])
    if write:
        return logits, None, None
    return logits, torch.stack(new_keys), torch.stack(new_values)


class _Sliced(torch.nn.Module):
    """The pure ``step`` on whole cache buffers, for export: the cached length is the size of
    ``length`` (an empty (cached, 0) tensor), so every size and stride the compiled code sees is a
    size of an input (a slice of a buffer has strides that follow its capacity, which no input
    would name)."""

    def __init__(self, heads: int, kv_heads: int, scaling: float) -> None:
        super().__init__()
        self.options = {"heads": heads, "kv_heads": kv_heads, "scaling": scaling}

    def forward(self, params, tokens, positions, keys, values, bias, length):
        return step(params, tokens, positions, keys, values, bias, length.shape[0], **self.options)


def _spec(value):
    """A JSON-able description of ``params``: tensors by shape and dtype, constants as they are."""
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        return {key: _spec(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_spec(item) for item in value]
    return value


def _from_spec(spec, device: str, capacity: int):
    """Zero tensors as ``spec`` describes them (a None size: ``capacity``), constants as they are."""
    if isinstance(spec, dict) and set(spec) == {"shape", "dtype"}:
        shape = [capacity if size is None else size for size in spec["shape"]]
        return torch.zeros(shape, dtype=getattr(torch, spec["dtype"]), device=device)
    if isinstance(spec, dict):
        return {key: _from_spec(item, device, capacity) for key, item in spec.items()}
    if isinstance(spec, list):
        return [_from_spec(item, device, capacity) for item in spec]
    return spec


def build_package(spec: dict, path: str) -> None:
    """Export ``step`` for the weights ``spec`` describes, with any rows (>= 2) and cache length
    (dynamic shapes), and compile it ahead of time (AOTInductor) into the package ``path``."""
    rows, capacity, cached = 3, 13, 7  # sizes with no accidental relation between them
    device = spec["device"]
    params = _from_spec(spec["params"], device, capacity)
    dim, kv_heads, layers = spec["head_dim"], spec["kv_heads"], len(spec["params"]["layers"])
    dtype = params["head"].dtype
    keys = torch.zeros(layers, rows, kv_heads, capacity, dim, dtype=dtype, device=device)
    index = torch.zeros(rows, dtype=torch.long, device=device)
    bias, length = torch.zeros(rows, capacity, dtype=dtype, device=device), torch.empty(cached, 0, device=device)
    example = (params, index, index.clone(), keys, torch.zeros_like(keys), bias, length)
    rows_dim, capacity_dim, cached_dim = (torch.export.Dim(name, min=2) for name in ("rows", "capacity", "cached"))
    params_dynamic = torch.utils._pytree.tree_map(lambda _: None, params)
    params_dynamic["cos"] = params_dynamic["sin_signed"] = {0: capacity_dim}  # the rotary tables span the cache
    dynamic = (
        params_dynamic,
        {0: rows_dim}, {0: rows_dim},
        {1: rows_dim, 3: capacity_dim}, {1: rows_dim, 3: capacity_dim},
        {0: rows_dim, 1: capacity_dim}, {0: cached_dim},
    )  # fmt: skip
    module = _Sliced(spec["heads"], kv_heads, spec["scaling"])
    with torch.no_grad():
        exported = torch.export.export(module, example, dynamic_shapes=dynamic)
        torch._inductor.aoti_compile_and_package(exported, package_path=path)


def package_dir() -> Path:
    """Where compiled decode steps are kept: ``$TBRM_CACHE/aoti`` (default ``~/.cache/tbrm``)."""
    return Path(os.environ.get("TBRM_CACHE", Path.home() / ".cache" / "tbrm")) / "aoti"


@functools.cache
def compiler_found() -> bool:
    """A C++ compiler for AOTInductor is on this machine (what ``rollout.engine=auto`` asks)."""
    try:
        from torch._inductor import cpp_builder

        return shutil.which(cpp_builder.get_cpp_compiler()) is not None
    except Exception:  # no compiler configured or found
        return False


_FAILED: dict[str, str] = {}  # package key -> the compiler's message: never retried in this process
_WARNED: list[bool] = []  # rollout.engine=auto has said once that it fell back


@functools.cache
def compiled_step(spec_json: str):
    """The decode step for the weights ``spec_json`` describes, compiled ahead of time once per
    machine (AOTInductor, in a child process, so the compiler's memory never joins the training
    process) and loaded from ``package_dir()`` by every later process: no compilation, no
    tracing and no guards at run time, one C++ call per decode step."""
    # keyed by this file too: a package compiled from an older ``step`` is never loaded
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = hashlib.sha256(f"{torch.__version__}|{sys.version_info[:2]}|{source}|{spec_json}".encode()).hexdigest()[:20]
    path = package_dir() / f"decode_step_{key}.pt2"
    if key in _FAILED:
        raise RuntimeError(_FAILED[key])
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(path.with_suffix(".lock")):  # one compiler per machine (DDP ranks wait for it)
            if not path.exists():
                log.info("compiling the decode step ahead of time into %s (once per machine and model "
                         "architecture; about 30 s on 2 CPU cores)", path)  # fmt: skip
                partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.pt2")
                done = subprocess.run(
                    [sys.executable, "-m", "tbrm.rollout.lean_step", str(partial), str(os.getpid())],
                    input=spec_json, text=True, capture_output=True,
                )  # fmt: skip
                if done.returncode != 0:
                    _FAILED[key] = (
                        "rollout.engine=compiled could not compile the decode step ahead of time (it needs a "
                        f"C++ compiler); use rollout.engine=compact. The compiler said:\n{done.stderr[-3000:]}"
                    )
                    raise RuntimeError(_FAILED[key])
                os.replace(partial, path)  # whole or not at all
    return torch._inductor.aoti_load_package(str(path))


@contextlib.contextmanager
def _exclusive(path: Path):
    """An exclusive lock on ``path`` (``fcntl.flock``) while the block runs; none where ``fcntl``
    is missing (Windows), where concurrent compilations then just repeat the work."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "w") as file:  # closing it releases the lock
        fcntl.flock(file, fcntl.LOCK_EX)
        yield


class LeanStep:
    """The decode step of a supported model; build with :meth:`for_model`."""

    @torch.no_grad()
    def __init__(self, model, capacity: int, compiled: bool = False) -> None:
        body = model.model
        attn = body.layers[0].self_attn
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.scaling = float(attn.scaling)
        self.compiled = compiled
        rotary = body.rotary_emb
        angles = torch.arange(capacity, device=rotary.inv_freq.device).float()[:, None] * rotary.inv_freq
        scale = getattr(rotary, "attention_scaling", 1.0)
        dtype = model.lm_head.weight.dtype
        layers = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            q_norm = getattr(a, "q_norm", None)
            biases = (a.q_proj.bias, a.k_proj.bias, a.v_proj.bias)
            layers.append(
                {
                    "input_norm": layer.input_layernorm.weight,
                    "input_eps": _eps(layer.input_layernorm),
                    "qkv": torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)).t().contiguous(),
                    "qkv_bias": None if biases[0] is None else torch.cat(biases),
                    "q_norm": None if q_norm is None else q_norm.weight,
                    "k_norm": None if q_norm is None else a.k_norm.weight,
                    "qk_eps": 0.0 if q_norm is None else _eps(q_norm),
                    "o": a.o_proj.weight.t().contiguous(),
                    "post_norm": layer.post_attention_layernorm.weight,
                    "post_eps": _eps(layer.post_attention_layernorm),
                    "gate_up": torch.cat((m.gate_proj.weight, m.up_proj.weight)).t().contiguous(),
                    "down": m.down_proj.weight.t().contiguous(),
                }
            )
        self.params = {
            "embed": body.embed_tokens.weight,
            "cos": (angles.cos().repeat(1, 2) * scale).to(dtype),
            "sin_signed": (torch.cat((-angles.sin(), angles.sin()), -1) * scale).to(dtype),
            "layers": layers,
            "norm": body.norm.weight,
            "norm_eps": _eps(body.norm),
            "head": model.lm_head.weight,
            "head_bias": model.lm_head.bias,
        }
        # key order of the spec: the order the call flattens the params in
        self.compiled_fn = compiled_step(json.dumps(self.spec())) if compiled else None

    @classmethod
    def for_model(cls, model, cache, *, compiled: bool | None = False) -> LeanStep | None:
        """A step for ``model`` (rotary tables for ``cache``'s capacity) if its architecture is
        covered and every layer of ``cache`` is a ``PreallocatedLayer``; None otherwise (the
        caller falls back to ``forward``). ``compiled``: True compiles it (float32 models only; or
        raises), False runs it eagerly, None (``rollout.engine=auto``) compiles it for a float32
        model on CPU, outside autocast, where a C++ compiler is found, and runs it eagerly
        otherwise (with one warning if the compilation fails)."""
        from tbrm.rollout.decode import PreallocatedLayer

        config = model.config
        rope = getattr(config, "rope_parameters", None) or {}
        covered = (
            config.model_type in SUPPORTED
            and rope.get("rope_type", "default") == "default"
            and getattr(config, "hidden_act", "silu") == "silu"
            and not getattr(config, "mlp_bias", False)
            and all(type(layer) is PreallocatedLayer for layer in cache.layers)
            and hasattr(model, "model")
            and hasattr(getattr(model.model, "rotary_emb", None), "inv_freq")
            and all(_plain_linears(layer) for layer in model.model.layers)
        )
        if not covered:
            return None
        capacity = cache.layers[0].capacity
        autocast = torch.is_autocast_enabled(model.device.type)
        if compiled and (model.dtype != torch.float32 or autocast):
            what = "under autocast" if autocast else f"a {model.dtype} model"
            raise ValueError(
                f"rollout.engine=compiled compiles the decode step of float32 models without autocast, not {what} "
                "(trainer.precision=32-true): use rollout.engine=compact."
            )
        if compiled is None:
            if model.device.type != "cpu" or model.dtype != torch.float32 or autocast or not compiler_found():
                return cls(model, capacity)
            try:
                return cls(model, capacity, compiled=True)
            except RuntimeError as error:
                if not _WARNED:
                    _WARNED.append(True)
                    log.warning("rollout.engine=auto runs the decode step eagerly (as compact): %s", error)
                return cls(model, capacity)
        return cls(model, capacity, compiled=compiled)

    @torch.no_grad()
    def __call__(self, tokens, positions, keys, values, bias, cached: int) -> torch.Tensor:
        """``step`` on the weights packed for this rollout, against the first ``cached`` positions
        of the cache buffers ``keys``, ``values`` (layers, rows, kv_heads, capacity, head_dim) and
        ``bias`` (rows, capacity): writes the new token's keys and values at position ``cached``
        and returns the next-token logits (rows, vocab)."""
        if self.compiled:
            length = torch.empty(cached, 0, device=keys.device)
            logits, new_keys, new_values = self.compiled_fn(self.params, tokens, positions, keys, values, bias, length)
            keys[:, :, :, cached], values[:, :, :, cached] = new_keys, new_values
            return logits
        options = {"heads": self.heads, "kv_heads": self.kv_heads, "scaling": self.scaling}
        return step(self.params, tokens, positions, keys, values, bias, cached, **options, write=True)[0]

    def spec(self) -> dict:
        """What the compiled step depends on: the weights' shapes and dtypes, and the constants."""
        dim = self.params["cos"].shape[-1]
        options = {"heads": self.heads, "kv_heads": self.kv_heads, "scaling": self.scaling, "head_dim": dim}
        params = _spec(self.params)
        params["cos"]["shape"][0] = params["sin_signed"]["shape"][0] = None  # the cache's capacity: any
        return {"params": params, "device": self.params["head"].device.type, **options}


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` does: a compiler child must not outlive a killed run.
    Linux delivers SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``); a parent already
    gone (it died while this child imported torch) ends the child now."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


if __name__ == "__main__":  # python -m tbrm.rollout.lean_step PACKAGE PARENT_PID < spec.json (see compiled_step)
    if len(sys.argv) > 2:
        die_with_parent(int(sys.argv[2]))
    build_package(json.loads(sys.stdin.read()), sys.argv[1])
