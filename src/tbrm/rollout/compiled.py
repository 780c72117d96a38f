"""``rollout.engine=compiled`` and ``auto``: the compact loop with its Llama-family decode step
compiled ahead of time by AOTInductor (``tbrm.rollout.aot``: about 30 s once per machine and
architecture on 2 CPU cores, then loaded in under a second). ``compiled`` requires a covered
float32 model (Llama, Mistral, Qwen2, Qwen3) and says so otherwise; ``auto`` compiles where it
can (a covered model on CPU and a C++ compiler) and runs the compact loop otherwise."""

from __future__ import annotations

from tbrm.rollout.compact import CompactEngine


class CompiledEngine(CompactEngine):
    compiled = True


class AutoEngine(CompactEngine):
    compiled = None
