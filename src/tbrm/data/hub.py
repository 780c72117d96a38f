"""Math reasoning sets loaded through ``datasets``, by hub name or from a local file.

A :class:`MathSource` says where one split comes from (a hub name, or a ``path`` that overrides
it) and how a row maps to a prompt record: which field holds the question (or a format string
over several fields, e.g. SVAMP's ``"{Body} {Question}"``) and how to read the gold answer from
its field (as is, after ``####`` as in GSM8K, the last ``\\boxed{}`` as in Minerva Math, or the
first item of a list as in OlympiadBench). Rows that lack a question or an answer fail with the
file and row named, or are skipped and counted when ``skip_bad_rows`` is set.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from tbrm.rewards.exact import extract_hash_answer
from tbrm.rewards.math_answers import last_boxed

log = logging.getLogger(__name__)

ANSWER_FORMATS = ("field", "hash", "boxed", "boxed_if_any", "first")
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_TEMPLATE = "{question}\n" + BOXED_INSTRUCTION
TEMPLATES = ("plain", "qwen_math")


def render_prompt(question: str, template: str = "plain", tokenizer=None) -> str:
    """The prompt text for ``question``.

    ``plain``: the question, a newline and the ``\\boxed{}`` instruction. ``qwen_math``: the
    Qwen2.5-Math chat format (the instruction as the system message, the question as the user's)
    rendered by ``tokenizer.apply_chat_template`` when the tokenizer has a chat template, else
    written out in ChatML as Qwen's template does. Any other string is a template with ``{question}``.
    """
    if template == "qwen_math":
        messages = [{"role": "system", "content": BOXED_INSTRUCTION}, {"role": "user", "content": question}]
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return (
            "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            + "<|im_start|>assistant\n"
        )
    return (DEFAULT_TEMPLATE if template == "plain" else template).replace("{question}", question)


def load_hub_dataset(name: str, subset: str | None, split: str, key: str = "data"):
    """``datasets.load_dataset(name, subset, split=split)``, offline too.

    With ``HF_HUB_OFFLINE=1``, ``datasets`` finds only sets it prepared itself in an earlier online
    run (its own cache, ``HF_DATASETS_CACHE``); a set downloaded into the Hugging Face hub cache
    (``hf download --repo-type dataset <name>``) is then read from that snapshot folder instead.
    """
    import datasets
    import huggingface_hub

    try:
        return datasets.load_dataset(name, subset, split=split)
    except ConnectionError as err:  # offline, or the hub unreachable: try the hub cache's snapshot
        try:
            local = huggingface_hub.snapshot_download(name, repo_type="dataset", local_files_only=True)
        except Exception:
            raise ConnectionError(
                f"{key}: data set {name!r} is neither in the datasets cache nor in the Hugging Face hub cache "
                f"({huggingface_hub.constants.HF_HUB_CACHE}), and the hub cannot be reached ({err}). Download it "
                f"where there is network (`hf download --repo-type dataset {name}`), or give a local file with `path`."
            ) from err
        return datasets.load_dataset(local, subset, split=split)


class BadRowError(ValueError):
    """A data row without a usable question or answer."""


def get_field(row: dict, name: str):
    """``row[name]``, where a dotted name walks nested dicts and lists (``reward_model.ground_truth``,
    ``prompt.0.content``); None when any part is missing."""
    value = row
    for part in name.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def get_any(row: dict, names: str):
    """The first of ``names`` (alternatives separated by ``|``, each as in :func:`get_field`) that
    the row has and is not empty: ``question|problem`` reads either schema of a benchmark."""
    for name in names.split("|"):
        value = get_field(row, name.strip())
        if value is not None and value != "":
            return value
    return None


def _answer_text(value, answer_format: str) -> str | None:
    if answer_format == "first":
        if not isinstance(value, (list, tuple)) or not value:
            return None
        value = value[0]
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # AMC and SVAMP write 27 as 27.0
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return None
    if answer_format == "hash":
        return extract_hash_answer(value)
    if answer_format == "boxed":
        return last_boxed(value)
    if answer_format == "boxed_if_any":
        boxed = last_boxed(value)
        value = boxed if boxed is not None else value
    return value.strip() or None


@dataclass
class MathSource:
    """Where one split comes from and how its rows become ``{"prompt", "answer", "question"}``.

    Attributes:
        name: hub name for ``datasets.load_dataset`` (e.g. ``openai/gsm8k``).
        path: a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file; overrides ``name``.
        subset: the hub configuration (e.g. ``main`` for GSM8K).
        split: the hub split (a local file is read whole).
        question: the question's field (dotted for nested ones: ``prompt.0.content``; ``a|b``: the
            first of several that a row has), or a format string over top-level fields
            (``"{Body} {Question}"``).
        question_regex: when set and it matches, the question is its first group (e.g. the
            problem inside DAPO's "Answer:" instruction wrapper); rows it does not match keep the
            whole text.
        answer: the gold answer's field (dotted, or ``a|b`` alternatives, as for ``question``).
        answer_format: ``field`` (as is) | ``hash`` (after ``####``) | ``boxed`` (last
            ``\\boxed{}``) | ``boxed_if_any`` (last ``\\boxed{}`` when there is one, else as is) |
            ``first`` (first item of a list).
        dedupe: keep only the first row of each question (DAPO-Math-17k on the hub repeats its
            17.4k problems about 100 times); the count dropped is logged.
        limit: keep the first ``limit`` rows (None: all), before ``dedupe``.
    """

    name: str | None = None
    path: str | None = None
    subset: str | None = None
    split: str = "train"
    question: str = "problem"
    answer: str = "answer"
    answer_format: str = "field"
    question_regex: str | None = None
    dedupe: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.question_regex is not None:
            try:
                self._pattern = re.compile(self.question_regex, re.DOTALL)
            except re.error as err:
                raise ValueError(f"question_regex {self.question_regex!r} is not a regular expression: {err}") from err
            if self._pattern.groups < 1:
                raise ValueError(f"question_regex {self.question_regex!r} needs a group: (...) around the question.")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS} (got {self.answer_format!r}).")
        if not self.name and not self.path:
            raise ValueError("a data source needs a hub `name` or a local `path`; set one of them.")

    @property
    def where(self) -> str:
        return str(self.path) if self.path else f"{self.name} ({self.subset or 'default'}, {self.split})"

    def load_rows(self) -> list[dict]:
        """The raw rows, through ``datasets`` (a local file when ``path`` is set, else the hub)."""
        import datasets

        if self.path:
            path = Path(self.path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"data file {path} does not exist; fix the data config's `path`.")
            builder = FILE_BUILDERS.get(path.suffix)
            if builder is None:
                raise ValueError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(FILE_BUILDERS)}.")
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            dataset = load_hub_dataset(self.name, self.subset, self.split)
        if self.limit is not None:
            dataset = dataset.select(range(min(self.limit, len(dataset))))
        return dataset.to_list()

    def _question(self, row: dict) -> str | None:
        try:
            text = self.question.format(**row) if "{" in self.question else get_any(row, self.question)
        except (KeyError, IndexError):
            return None
        if not isinstance(text, str) or not text.strip():
            return None
        if self.question_regex is not None:
            match = self._pattern.search(text)
            text = match.group(1) if match else text
        return text.strip() or None

    def records(self, template: str = "plain", skip_bad_rows: bool = False, tokenizer=None) -> tuple[list[dict], int]:
        """``(records, skipped)``: prompt records of every good row, and how many rows were skipped.

        ``template`` and ``tokenizer`` as in :func:`render_prompt`."""
        records, skipped, seen = [], 0, set()
        rows = self.load_rows()
        for index, row in enumerate(rows):
            question = self._question(row)
            answer = _answer_text(get_any(row, self.answer), self.answer_format)
            if question is None or answer is None:
                value = repr(get_any(row, self.answer))[:80]
                problem = (
                    f"no question in field {self.question!r}"
                    if question is None
                    else f"no answer in field {self.answer!r} (format {self.answer_format!r}; value {value})"
                )
                if not skip_bad_rows:
                    raise BadRowError(
                        f"{self.where}, row {index}: {problem}. Fix the row or the field mapping, or set "
                        "skip_bad_rows=true (data.task.skip_bad_rows, eval.skip_bad_rows) to skip such rows."
                    )
                skipped += 1
                continue
            if self.dedupe:
                if question in seen:
                    continue
                seen.add(question)
            records.append(
                {"prompt": render_prompt(question, template, tokenizer), "answer": answer, "question": question}
            )
        if skipped:
            log.warning("%s: skipped %d bad rows", self.where, skipped)
        if self.dedupe:
            log.info("%s: %d distinct questions (%d rows read)", self.where, len(records), len(rows))
        return records, skipped


@dataclass
class MathTask:
    """Train / validation / test splits from :class:`MathSource` settings (a task for ``PromptDataModule``).

    ``template`` is ``plain`` | ``qwen_math`` | a string with ``{question}`` (see
    :func:`render_prompt`); ``tokenizer`` (a hub name or directory, normally the policy's) supplies
    the chat template for ``qwen_math``. ``validation`` and ``test`` may be the same source;
    ``skipped`` counts skipped rows per split.
    """

    train: MathSource | None = None
    validation: MathSource | None = None
    test: MathSource | None = None
    template: str = "plain"
    tokenizer: str | None = None
    skip_bad_rows: bool = False
    skipped: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES and "{question}" not in self.template:
            raise ValueError(f"data.task.template must be one of {TEMPLATES} or a string with {{question}}.")
        self._splits: dict[str, list[dict]] | None = None

    def splits(self) -> dict[str, list[dict]]:
        if self._splits is None:
            tokenizer = None
            if self.template == "qwen_math" and self.tokenizer:
                from tbrm.models.loading import load_tokenizer

                tokenizer = load_tokenizer(self.tokenizer, key="data.task.tokenizer")
            self._splits = {}
            for name in ("train", "validation", "test"):
                source = getattr(self, name)
                if isinstance(source, dict):
                    source = MathSource(**source)
                if source is None:
                    self._splits[name], self.skipped[name] = [], 0
                else:
                    self._splits[name], self.skipped[name] = source.records(
                        self.template, self.skip_bad_rows, tokenizer
                    )
        return self._splits
