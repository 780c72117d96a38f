"""Math-Verify reward: the last ``\\boxed{}`` (or the ``#### <answer>``) against a gold answer.

The gold answer and the extracted prediction are both parsed by Math-Verify
(``math_verify.parse``) and compared symbolically (``math_verify.verify``), so ``\\frac{1}{2}``,
``0.5`` and ``\\dfrac12`` agree, as do ``(3, \\frac{\\pi}{2})`` written with or without
``\\left( ... \\right)``. Every item has its own time limit, and odd model output (no answer,
unbalanced braces, LaTeX that does not parse, a parser that times out) scores 0 instead of raising.
"""

from __future__ import annotations

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from tbrm.rewards.exact import extract_hash_answer

_BOXED = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced.

    ``\\boxed 5`` (no braces) gives ``5``. None when there is no box or its braces never close.
    """
    start = max(text.rfind(tag) for tag in _BOXED)
    if start < 0:
        return None
    tag = next(t for t in _BOXED if text.startswith(t, start))
    rest = text[start + len(tag) :]
    if not rest.lstrip().startswith("{"):
        token = rest.strip().split("$")[0].split()
        return token[0].rstrip(".,;:") if token else None
    depth = 0
    begin = rest.index("{")
    for i in range(begin, len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[i], 0)
        if depth == 0:
            return rest[begin + 1 : i]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a completion states: its last ``\\boxed{}``, else its ``####`` number."""
    boxed = last_boxed(text)
    return boxed if boxed is not None else extract_hash_answer(text)


_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def _parse(answer: str, timeout_s: int) -> list:
    return parse(f"\\boxed{{{answer}}}", extraction_config=_CONFIG, parsing_timeout=timeout_s)


def is_equivalent(predicted: str, gold: str, timeout_s: int = 5) -> bool:
    """Whether the answer ``predicted`` equals ``gold`` by Math-Verify; False on any failure."""
    try:
        gold_parsed = _parse(gold, timeout_s)
        predicted_parsed = _parse(predicted, timeout_s)
        if not gold_parsed or not predicted_parsed:
            return False
        return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=timeout_s))
    except Exception:  # noqa: BLE001 - a grader must never stop training on odd output
        return False


def math_verify_reward(completions: list[str], answers: list[str], timeout_s: int = 5) -> list[float]:
    """1.0 where the completion's final answer (last ``\\boxed{}`` or ``####``) equals the gold one.

    ``timeout_s`` bounds parsing and verification of each item (Math-Verify's own limits, which
    use ``SIGALRM`` in the main thread). Never raises on model output.
    """
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers.")
    rewards = []
    for completion, answer in zip(completions, answers, strict=True):
        predicted = extract_answer(completion)
        ok = predicted is not None and is_equivalent(predicted, str(answer), timeout_s)
        rewards.append(1.0 if ok else 0.0)
    return rewards
