"""Models: loading by hub name or directory (``loading``), the update's forward passes
(``forward``), the critic (``critic``), the initial policy of a run (``policy``), the tiny default
(``tiny``, ``standin``) and its warm start (``warm_start``)."""

from tbrm.models.loading import load_model_and_tokenizer

__all__ = ["load_model_and_tokenizer"]
