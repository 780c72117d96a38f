from math import comb

import pytest
import torch

from tbrm.eval import evaluate_accuracy, pass_at_k


def test_pass_at_k_hand_computed():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(8, 3, 4) == pytest.approx(1 - comb(5, 4) / comb(8, 4))


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_evaluate_accuracy_on_a_model_that_copies_the_answer(tiny_model_dir):
    from tbrm.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    records = [{"prompt": "1*2=", "answer": "2"}, {"prompt": "3*4=", "answer": "12"}]
    calls = []

    def reward(completions, answers):
        calls.append(len(completions))
        return [1.0] * len(completions)

    torch.manual_seed(0)
    metrics = evaluate_accuracy(model, tokenizer, records, reward, n_samples=4, k=(1, 4), max_new_tokens=4)
    assert metrics == {"accuracy": 1.0, "accuracy_sampled": 1.0, "pass@1": 1.0, "pass@4": 1.0}
    assert calls == [2, 8]
