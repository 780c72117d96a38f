"""PPO's critic: a copy of the policy's backbone with a scalar value head.

The backbone is loaded with ``AutoModel.from_pretrained`` from the policy's source (the causal
LM's weights without its LM head), so the critic starts from the same features as the policy.
The head starts at zero, so every initial value is 0, the middle of a 0/1 reward.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel

from tbrm.models.loading import enable_gradient_checkpointing, pretrained_kwargs


class ValueModel(nn.Module):
    """V_phi(s_t) for every position of a sequence: ``backbone`` hidden states -> linear head."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.value_head = nn.Linear(hidden, 1, dtype=next(backbone.parameters()).dtype)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        dtype: str = "float32",
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
    ) -> ValueModel:
        """The backbone of ``name_or_path`` (loaded as the policy is, see ``tbrm.models.loading``)."""
        kwargs = pretrained_kwargs(
            name_or_path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
        )
        backbone = AutoModel.from_pretrained(name_or_path, **kwargs)
        if gradient_checkpointing:
            enable_gradient_checkpointing(backbone)
        return cls(backbone)

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Values (batch, seq_len) in float32: position t holds V of the state after token t."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.value_head(hidden).squeeze(-1).float()
