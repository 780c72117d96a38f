"""Shared fixtures: a tiny random-init model saved with save_pretrained, repository paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a small model and task keep each run to seconds; everything else is the default config
MODEL = [
    "model.architecture.hidden_size=64",
    "model.architecture.num_layers=2",
    "model.architecture.intermediate_size=128",
    "model.warm_start.steps=20",
]
TINY = ["experiment=smoke", *MODEL]
# experiment=smoke's budget as overrides, for sweeps that name an experiment of their own
SMOKE = [
    *MODEL,
    "model.warm_start.eval_size=0",
    "data.task.num_val=64",
    "data.task.num_test=64",
    "data.val_batch_size=64",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
]


def run_env(**extra: str) -> dict:
    """The environment of a run.py process a test starts: W&B offline, and no wandb service of the
    test process's own (``WANDB_SERVICE``): a run killed in a shared service keeps its id busy."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", **extra}


def run_py(
    repo_root: Path, tmp: Path, *overrides: str, check: bool = True, tiny: list[str] = TINY, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real run.py with logs and caches under ``tmp`` and the ``tiny`` budget; flags
    (``-m``) go first; ``env`` adds environment variables. Raises with the output's tail when
    ``check`` and it fails."""
    env = run_env(**(env or {}))
    flags = [o for o in overrides if o.startswith("-")]
    overrides = [o for o in overrides if not o.startswith("-")]
    paths = [f"paths.log_dir={tmp}/logs", f"paths.cache_dir={tmp}/cache"]
    cmd = [sys.executable, "run.py", *flags, *paths, *tiny, *overrides]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def save_tiny_model(path: Path, **dims) -> Path:
    """A 2-layer random-init Llama of ``dims`` (``tbrm.models.tiny.build_tiny_model``) and the
    arithmetic task's character tokenizer, written to ``path`` with save_pretrained."""
    from tbrm.data.arithmetic import ArithmeticTask
    from tbrm.models.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(ArithmeticTask().alphabet())
    model = build_tiny_model(tokenizer, num_layers=2, **dims)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def hub_cache(cache: Path, repo_id: str, files: dict[str, Path], repo_type: str = "model") -> Path:
    """Put ``files`` ({path in the repo: local file}) into a Hugging Face hub cache folder as
    ``hf download`` lays it out: ``<cache>/<type>s--<org>--<name>/{blobs,snapshots/<commit>,refs/main}``,
    each snapshot file a link to its blob. With ``HF_HUB_CACHE=<cache>`` (and ``HF_HUB_OFFLINE=1``),
    ``from_pretrained("<org>/<name>")`` resolves the name to it exactly as it would after a download."""
    import hashlib

    root = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    for rel, src in files.items():
        data = Path(src).read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return root


def hub_model(cache: Path, repo_id: str, saved: Path) -> Path:
    """A ``save_pretrained`` folder cached under the hub name ``repo_id``."""
    return hub_cache(cache, repo_id, {p.name: p for p in Path(saved).iterdir() if p.is_file()})


@pytest.fixture(scope="session")
def kl_sweep(tmp_path_factory) -> Path:
    """A real, tiny ``experiment=kl_ablation`` multirun: TBRM n=1 and GRPO n=4, two betas each,
    seeds 0 and 1 (8 jobs of 4 steps), logged to CSV and W&B offline."""
    tmp = tmp_path_factory.mktemp("kl_sweep")
    run_py(
        ROOT,
        tmp,
        "-m",
        "experiment=kl_ablation",
        "method=tbrm_n1,grpo_n4",
        "kl_ablation.level=0,1",
        "seed=0,1",
        "kl_ablation.grid.tbrm_n1=[0.05,0.2]",
        "kl_ablation.grid.grpo_n4=[0.0,0.04]",
        "data.batch_size=8",
        f"hydra.sweep.dir={tmp / 'sweep'}",
        tiny=SMOKE,
    )
    return tmp / "sweep"


@pytest.fixture(scope="session")
def failed_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A real multirun of two jobs whose second fails (TBRM with beta -1 is rejected)."""
    tmp = tmp_path_factory.mktemp("failed_sweep")
    proc = run_py(ROOT, tmp, "-m", "algorithm.beta=0.1,-1", f"hydra.sweep.dir={tmp / 'sweep'}", check=False)
    return tmp / "sweep", proc


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random-init Llama and its character tokenizer, written with save_pretrained."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"), hidden_size=32, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def qwen2_model_dir(tmp_path_factory) -> Path:
    """A tiny random-init model of the Qwen2 architecture and a byte-level BPE Qwen2Tokenizer with
    a chat template, written with save_pretrained (``tbrm.models.standin``)."""
    from tbrm.models.standin import save_qwen2_standin

    return save_qwen2_standin(tmp_path_factory.mktemp("qwen2_model"), "tiny", dtype="float32")


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    """Never reach a W&B server from tests; keep wandb's own files inside the test's tmp dir."""
    monkeypatch.setenv("WANDB_MODE", os.environ.get("TBRM_TEST_WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    # a wandb service an earlier in-process test started is not for the run.py processes a test starts
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture(scope="session")
def math_data_dir() -> Path:
    """The local benchmark files (``TBRM_MATH_DATA``, default ``../shared/data/math``).

    Missing files fail the test under CI (``CI=true``) and skip it elsewhere, so a checkout
    without the folder still runs its suite.
    """
    path = Path(os.environ.get("TBRM_MATH_DATA", ROOT.parent / "shared" / "data" / "math"))
    if not (path / "math500.jsonl").exists():
        reason = f"benchmark files not found in {path}; set TBRM_MATH_DATA to the folder that holds math500.jsonl"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path
