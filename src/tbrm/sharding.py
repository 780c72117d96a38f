"""Sharded data parallelism: torch's FSDP2 (``fully_shard``) under Lightning's ``ModelParallelStrategy``
(``trainer=fsdp``, ``trainer=fsdp_cpu``).

Each decoder layer of the policy (and of PPO's critic) and then the whole model are sharded over
the data-parallel ranks: every rank keeps 1/N of the weights between steps, and 1/N of the
gradients and of AdamW's moments always. An RL step runs forwards whose number differs between
ranks (each engine stops when its own rows end; the update plans micro-batches by each rank's
tokens), while a sharded forward is a collective. So for the length of a step (and of a
validation) the weights are gathered once on every rank (``gathered``: one all-gather per layer,
the same on all ranks) and the forwards run unsharded; the backward passes accumulate unsharded
gradients, and exactly one backward per optimizer step on every rank reduce-scatters them
(``GradientSync``): the last micro-batch that carries a gradient, or a zero-weight one on a rank
that has none. After each optimizer step the gathered weights are refreshed from the updated
shards; after the step they are released.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def fsdp_strategy(devices: int, num_nodes: int = 1, **options):
    """Lightning's ``ModelParallelStrategy`` with every rank on the data-parallel axis (no tensor
    parallelism): ``devices x num_nodes`` shards; ``options`` go to the strategy."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=devices * num_nodes, tensor_parallel_size=1, **options)


def is_sharded(model: torch.nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model: torch.nn.Module, mesh) -> None:
    """``fully_shard`` each decoder layer of ``model`` (Hugging Face's ``_no_split_modules``
    classes), then ``model`` itself, over ``mesh``."""
    from torch.distributed.fsdp import fully_shard

    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    backbone = getattr(model, "backbone", None)  # PPO's critic wraps a base model
    layer_classes |= set(getattr(backbone, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def fsdp_modules(*models) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for model in models if model is not None for m in model.modules() if isinstance(m, FSDPModule)]


def gather(*models) -> None:
    """All-gather every shard of ``models`` and keep the weights whole across forwards and backwards
    (nothing for models that are not sharded)."""
    for module in fsdp_modules(*models):
        module.set_reshard_after_forward(False, recurse=False)
        module.set_reshard_after_backward(False, recurse=False)
        module.unshard()


def release(*models) -> None:
    """Free the gathered weights (each rank keeps its shards) and reshard after each pass again."""
    for module in fsdp_modules(*models):
        module.reshard()
        module.set_reshard_after_forward(True, recurse=False)
        module.set_reshard_after_backward(True, recurse=False)


@contextmanager
def gathered(*models):
    """The sharded ones of ``models`` whole for the block (nothing for unsharded models)."""
    gather(*models)
    try:
        yield
    finally:
        release(*models)


class GradientSync:
    """How ``tbrm.update.Update`` synchronises gradients across sharded models: reduce-scatter in
    the last backward of each optimizer step (``before_backward(last)``), and after the step the
    gathered weights refreshed from the updated shards (``after_step``)."""

    def __init__(self, *models) -> None:
        self.models = [m for m in models if is_sharded(m)]

    def __bool__(self) -> bool:
        return bool(self.models)

    def before_backward(self, last: bool) -> None:
        for model in self.models:
            model.set_requires_gradient_sync(last)

    def after_step(self) -> None:
        release(*self.models)
        gather(*self.models)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole state dict of a sharded model on CPU (a collective: call it on every rank); None
    for a model that is not sharded (its own ``state_dict`` is whole)."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    kept = {name for name, _ in model.named_parameters()}  # a tied weight (lm_head = embeddings) once
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - kept
    return {name: tensor for name, tensor in state.items() if name not in tied}
