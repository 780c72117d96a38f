"""PPO's critic: the policy's backbone (loaded with from_pretrained) and a zero-initialised head."""

import torch
from transformers import AutoModelForCausalLM

from tbrm.models.critic import ValueModel


def test_critic_starts_from_the_policy_backbone_with_zero_values(tiny_model_dir):
    critic = ValueModel.from_pretrained(str(tiny_model_dir))
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    backbone = policy.model.state_dict()
    for name, tensor in critic.backbone.state_dict().items():
        torch.testing.assert_close(tensor, backbone[name])
    ids = torch.tensor([[3, 4, 5, 6], [0, 3, 4, 5]])
    values = critic(ids, attention_mask=torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]))
    assert values.shape == (2, 4) and values.dtype == torch.float32
    assert values.abs().max() == 0.0


def test_critic_learns_a_target(tiny_model_dir):
    torch.manual_seed(0)
    critic = ValueModel.from_pretrained(str(tiny_model_dir))
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    ids = torch.tensor([[3, 4, 5, 6]])
    for _ in range(30):
        loss = (critic(ids) - 0.7).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (critic(ids) - 0.7).abs().max() < 0.05
    assert critic.backbone.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0  # the backbone trains too
