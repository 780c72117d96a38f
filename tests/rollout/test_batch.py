"""RolloutBatch: the masks every engine produces, row grouping, micro-batch selection."""

import pytest
import torch

from tbrm.models.loading import load_model_and_tokenizer
from tbrm.rollout import generate_rollouts
from tbrm.rollout.batch import completion_mask_from_ids

PROMPTS = ["1*2=", "13*24=", "5+6=", "98*76="]
ANSWERS = ["2", "312", "11", "7448"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model_and_tokenizer(str(tiny_model_dir))


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert completion_mask_from_ids(ids, eos_token_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_rollouts_shapes_grouping_and_padding(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(0)
    out = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=3, max_new_tokens=10)
    assert len(out) == 12 and out.completion_ids.shape[1] <= 10
    assert out.prompts[:3] == ["1*2="] * 3 and out.answers[-1] == "7448"
    assert torch.equal(out.prompt_ids[0], out.prompt_ids[2])
    assert out.completion_mask.shape == out.completion_ids.shape == out.behavior_log_probs.shape
    padded = out.completion_mask == 0
    assert torch.all(out.completion_ids[padded] == tokenizer.pad_token_id)
    assert torch.all(out.behavior_log_probs[padded] == 0)
    assert torch.all(out.behavior_log_probs[~padded] <= 0)
    assert len(out.completions) == 12


def test_select_trims_padding_and_keeps_rows_in_the_order_asked(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(0)
    out = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=2, max_new_tokens=10)
    rows = [7, 0, 3]
    part = out.select(rows)
    assert part.prompts == [out.prompts[i] for i in rows] and part.completions == [out.completions[i] for i in rows]
    assert part.completion_ids.shape[1] == int(out.completion_mask[rows].sum(1).max())
    assert part.prompt_mask.sum(1).max() == part.prompt_mask.shape[1]  # no all-padding prompt column left
    assert part.lengths() == out.lengths(rows)
    for i, row in enumerate(rows):
        n = int(out.completion_mask[row].sum())
        assert torch.equal(part.completion_ids[i, :n], out.completion_ids[row, :n])
        assert torch.equal(part.stats.log_probs[i, :n], out.stats.log_probs[row, :n])


@pytest.mark.parametrize("engine", ["compact", "hf"])
def test_a_row_is_finished_when_it_ends_with_its_eos_and_the_flag_follows_the_rows(model_and_tokenizer, engine):
    from tbrm.data.trajectories import records_from_rollout, to_rollout_batch

    model, tokenizer = model_and_tokenizer
    torch.manual_seed(1)
    out = generate_rollouts(model, tokenizer, PROMPTS, ANSWERS, n=4, max_new_tokens=6, engine=engine)
    lengths = out.completion_mask.sum(1)
    last = out.completion_ids.gather(1, (lengths - 1)[:, None]).squeeze(1)
    assert torch.equal(out.finished, last == tokenizer.eos_token_id)
    assert 0 < int(out.finished.sum()) < len(out)  # some rows end, some are cut at max_new_tokens
    rows = [5, 0, 9]
    assert torch.equal(out.select(rows).finished, out.finished[rows]) and out.to("cpu").finished is not None
    stored = to_rollout_batch(
        records_from_rollout(out, [0.0] * len(out), eos_token_id=tokenizer.eos_token_id), tokenizer
    )
    assert torch.equal(stored.finished, out.finished)
