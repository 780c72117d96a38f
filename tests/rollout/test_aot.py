"""The ahead-of-time compilation of the decode step runs in a child process that never outlives
its parent: a run killed with SIGKILL while compiling takes its compiler with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

PARENT = """
import sys
from transformers import AutoModelForCausalLM
from tbrm.rollout.lean_step import LeanStep
LeanStep(AutoModelForCausalLM.from_pretrained(sys.argv[1]), 64, compiled=True)
"""


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` and that run the compiler entry point."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"tbrm.rollout.aot" in cmdline:
            found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_compiler_child_dies_with_its_parent(tiny_model_dir, tmp_path):
    env = {**os.environ, "TBRM_CACHE_DIR": str(tmp_path)}  # an empty package cache: the step is compiled now
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tiny_model_dir)], env=env)
    deadline, child = time.time() + 120, []
    while not child:
        assert parent.poll() is None and time.time() < deadline, "no compiler child started"
        child = children(parent.pid)
        time.sleep(0.05)
    time.sleep(6)  # past the child's imports, into the compilation (about 30 s on 2 cores)
    assert alive(child[0]), "the compilation ended before the parent could be killed"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 5
    while alive(child[0]) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(child[0]), "the compiler outlived its killed parent"
    assert not list(tmp_path.glob("aoti/*.pt2"))  # no package from the killed compilation
