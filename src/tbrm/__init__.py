"""tbrm: value-based (TBRM) and policy-based RL for LLM reasoning, in Lightning + Hydra.

TBRM is Trajectory Bellman Residual Minimization (Yuan et al., arXiv 2505.15311): the policy's
own logits are its Q-values and each trajectory contributes one squared Bellman residual.
"""

__version__ = "0.1.0"
