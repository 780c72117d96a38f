"""PPO's critic: a copy of the policy's backbone with a scalar value head.

The backbone is loaded with ``AutoModel.from_pretrained`` from the policy's source (the causal
LM's weights without its LM head), so the critic starts from the same features as the policy.
The head starts at zero, so every initial value is 0, the middle of a 0/1 reward.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel

from tbrm.models.loading import DTYPES


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
    def from_pretrained(cls, name_or_path: str, *, dtype: str = "float32") -> ValueModel:
        if dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(DTYPES)} (got {dtype!r}).")
        return cls(AutoModel.from_pretrained(name_or_path, dtype=DTYPES[dtype]))

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Values (batch, seq_len) in float32: position t holds V of the state after token t."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.value_head(hidden).squeeze(-1).float()
