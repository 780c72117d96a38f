"""The decode step (``tbrm.rollout.lean_math.step``) compiled ahead of time, once per machine.

``rollout.engine=compiled`` (and ``auto`` where it can) exports the pure step with dynamic shapes
(any rows, cache length and capacity) and compiles it with AOTInductor, once per machine and model
architecture (the weights are inputs, not constants), in a child process so the compiler's memory
never joins the training process, which dies with its parent. Every later process loads the
package from disk. Its generated CPU kernels fuse the norms, rotary embedding and SwiGLU, and a
decode step is one C++ call: no Python between its kernels, no tracing and no guards. Packages are
keyed by the step's source, the torch and Python versions and the weights' shapes, so a package
built from an older step is never loaded; processes that want the same package at once (DDP
ranks) wait on a file lock for the one that compiles it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from tbrm.rollout.lean_math import _Sliced

log = logging.getLogger(__name__)


def describe(value):
    """A JSON-able description of ``params``: tensors by shape and dtype, constants as they are."""
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        return {key: describe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [describe(item) for item in value]
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
    """Where compiled decode steps are kept: ``aoti/`` under the project's one cache root,
    ``$TBRM_CACHE_DIR`` (default ``~/.cache/tbrm``, as ``paths.cache_dir``). They depend only on
    the architecture, so every run on the machine shares them whatever its ``paths.cache_dir``."""
    return Path(os.environ.get("TBRM_CACHE_DIR") or Path.home() / ".cache" / "tbrm") / "aoti"


@functools.cache
def compiler_found() -> bool:
    """A C++ compiler for AOTInductor is on this machine (what ``rollout.engine=auto`` asks)."""
    try:
        from torch._inductor import cpp_builder

        return shutil.which(cpp_builder.get_cpp_compiler()) is not None
    except Exception:  # no compiler configured or found
        return False


_FAILED: dict[str, str] = {}  # package key -> the compiler's message: never retried in this process


@functools.cache
def compiled_step(spec_json: str):
    """The decode step for the weights ``spec_json`` describes, compiled ahead of time once per
    machine (AOTInductor, in a child process, so the compiler's memory never joins the training
    process) and loaded from ``package_dir()`` by every later process: no compilation, no
    tracing and no guards at run time, one C++ call per decode step."""
    # keyed by the step's source and its export too: a package of an older ``step`` is never loaded
    source = hashlib.sha256(Path(inspect.getfile(_Sliced)).read_bytes() + Path(__file__).read_bytes()).hexdigest()
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
                    [sys.executable, "-m", "tbrm.rollout.aot", str(partial), str(os.getpid())],
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


if __name__ == "__main__":  # python -m tbrm.rollout.aot PACKAGE PARENT_PID < spec.json (see compiled_step)
    if len(sys.argv) > 2:
        die_with_parent(int(sys.argv[2]))
    build_package(json.loads(sys.stdin.read()), sys.argv[1])
