"""The embedded task: seeded arithmetic problems with short step-by-step solutions.

A multiplication problem reads ``47*86=`` and its solution multiplies by each digit of the second
factor, then adds the shifted partial products, and ends with the answer after ``####``::

    47*86=47*6=282|47*8=376|282+3760=4042|#### 4042

Additions are solved column by column from the right, carrying: ``57+68=7+8=15|5+6+1=12|#### 125``.
The whole problem space (every pair of operands with the requested numbers of digits) is
shuffled with the task's own seed and cut into disjoint validation, test and train splits, so the
held-out problems never appear in training and are the same for every run seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

OPS = ("mul", "add")
MAX_ENUMERATED = 5_000_000


def _digit_range(digits: int) -> range:
    return range(10 ** (digits - 1) if digits > 1 else 0, 10**digits)


def mul_solution(a: int, b: int) -> str:
    """Scratchpad for ``a*b``: one partial product per digit of ``b``, then their shifted sum."""
    digits = [int(d) for d in reversed(str(b))]
    partials = [a * d for d in digits]
    steps = [f"{a}*{d}={p}" for d, p in zip(digits, partials, strict=True)]
    if len(partials) > 1:
        shifted = [p * 10**i for i, p in enumerate(partials)]
        steps.append("+".join(str(s) for s in shifted) + f"={a * b}")
    return "|".join(steps) + f"|#### {a * b}"


def add_solution(a: int, b: int) -> str:
    """Scratchpad for ``a+b``: column sums from the right with the carry, then the answer."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        terms = [int(s[i]) for s in (da, db) if i < len(s)] + ([carry] if carry else [])
        total = sum(terms)
        steps.append("+".join(map(str, terms)) + f"={total}")
        carry = total // 10
    return "|".join(steps) + f"|#### {a + b}"


@dataclass
class ArithmeticTask:
    """Seeded generator of arithmetic problems with disjoint splits.

    Attributes:
        op: ``mul`` (default; 2x2 digits leaves a small model room to improve) or ``add``.
        a_digits: digits of the first operand (difficulty knob).
        b_digits: digits of the second operand (difficulty knob).
        num_val: held-out problems for validation (1,000 gives a standard error near 0.015).
        num_test: held-out problems for the final test split.
        num_train: cap on training problems (None: all the rest).
        seed: the split seed; fixed across run seeds so every run sees the same held-out set.
    """

    op: str = "mul"
    a_digits: int = 2
    b_digits: int = 2
    num_val: int = 1000
    num_test: int = 1000
    num_train: int | None = None
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"data.task.op must be one of {OPS} (got {self.op!r}).")
        if self.a_digits < 1 or self.b_digits < 1:
            raise ValueError("data.task.a_digits and b_digits must be >= 1.")
        size = len(_digit_range(self.a_digits)) * len(_digit_range(self.b_digits))
        if size > MAX_ENUMERATED:
            raise ValueError(
                f"{size} problems for a_digits={self.a_digits}, b_digits={self.b_digits} is more "
                f"than this generator enumerates ({MAX_ENUMERATED}); use fewer digits."
            )
        if self.num_val + self.num_test >= size:
            raise ValueError(
                f"num_val + num_test = {self.num_val + self.num_test} leaves no training problems "
                f"out of {size}; lower them or add digits."
            )
        self._splits: dict[str, list[dict]] | None = None

    def record(self, a: int, b: int) -> dict:
        """One prompt record: ``prompt``, ``completion`` (the solution), ``answer`` and operands."""
        if self.op == "mul":
            prompt, solution, answer = f"{a}*{b}=", mul_solution(a, b), a * b
        else:
            prompt, solution, answer = f"{a}+{b}=", add_solution(a, b), a + b
        return {"prompt": prompt, "completion": solution, "answer": str(answer), "a": a, "b": b}

    def splits(self) -> dict[str, list[dict]]:
        """``{"train", "validation", "test"}`` lists of records, disjoint by construction."""
        if self._splits is None:
            pairs = [(a, b) for a in _digit_range(self.a_digits) for b in _digit_range(self.b_digits)]
            random.Random(self.seed).shuffle(pairs)
            val = pairs[: self.num_val]
            test = pairs[self.num_val : self.num_val + self.num_test]
            train = pairs[self.num_val + self.num_test :]
            if self.num_train is not None:
                train = train[: self.num_train]
            self._splits = {
                name: [self.record(a, b) for a, b in split]
                for name, split in (("train", train), ("validation", val), ("test", test))
            }
        return self._splits

    def alphabet(self) -> str:
        """Every character a prompt or solution of this task can contain."""
        return "0123456789*+=|# "
