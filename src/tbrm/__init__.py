"""tbrm: value-based (TBRM) and policy-based RL for LLM reasoning, in Lightning + Hydra.

TBRM is Trajectory Bellman Residual Minimization (Yuan et al., arXiv 2505.15311): the policy's
own logits are its Q-values and each trajectory contributes one squared Bellman residual.
"""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """``${tbrm.run_dir:...}`` (``conf/hydra/default.yaml``): a resumed run's own folder."""
    from omegaconf import OmegaConf

    def run_dir(ckpt_path, default):
        from tbrm.resume import run_dir as resolve

        return resolve(ckpt_path, default)

    if not OmegaConf.has_resolver("tbrm.run_dir"):
        OmegaConf.register_new_resolver("tbrm.run_dir", run_dir)


_register_resolvers()
