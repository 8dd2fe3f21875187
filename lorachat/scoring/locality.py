"""Locality: how much of the base model's behaviour an adapter keeps on questions it was not taught.

The base's greedy answers (adapters off) to a list of questions are generated once, in
length-sorted, left-padded batches, and kept as token ids (a `Reference`). A model with an adapter
on is then scored by one teacher-forced forward pass per batch over prompt + base answer:

- **exact** (`kept`): the share of questions along whose whole base answer (its first
  `max_new_tokens` tokens, up to and including EOS when that came first) the argmax at every
  position is the base's own. Greedy decoding is a chain of argmaxes, so these are exactly the
  questions greedy decoding answers as the base does, token for token, without generating anything;
- **token agreement** (`agree`): the share of base answer tokens where the argmax given the base's
  own prefix is the base's (EasyEdit's locality metric).

"The base's own" argmax is read by the same teacher-forced pass the scoring makes, once, when the
reference is made (`Reference.predicted`), not the generated token: in bf16 a batched, cached
generation and a teacher-forced pass round differently, and on SmolLM2-135M a quarter of the base's
own answers differed from themselves within 16 tokens (float32: 1 of 303). Scored on the reference's
own batches, the base keeps 100% by construction; a subset scored in other batches (the gate's
routed questions) can still differ by a rounding (bench/RESULTS.md, "kept in bf16").

Answers are plain greedy (no repetition penalty, whatever `:set` says), so the figures do not move
with the session's sampling settings. The probe questions (`probes.txt`) are for measuring only; the
anchor questions (`anchors.txt`, a disjoint list) are for training-time protection. This is the
model-level half: the caller decides which adapter (if any) is on. Knows nothing about sessions,
adapters, terminals, files other than those two lists, or training; the session's cache of base
answers is adapters/side_by_side.py's.
"""
from dataclasses import dataclass, field
from importlib import resources

from lorachat.core.errors import LorachatError
from lorachat.core.prompts import IGNORE, asked, prompt_ids, stop_ids
from lorachat.scoring.batches import (
    answer_logits,
    autocast,
    collate,
    evaluating,
    known,
    model_device,
    padding_id,
)

PROBES, ANCHORS = "probes", "anchors"
LENGTH_PROBES, LENGTH_TOKENS = 32, 64   # answer length: greedy answers to the first 32 probes, at most 64 tokens


@dataclass(frozen=True)
class LocalityOptions:
    """How base answers are made and scored (the issue's `max_new_tokens`: 16)."""
    max_new_tokens: int = field(default=16, metadata={"help": "tokens of each base answer compared", "min": 1, "max": 512})
    batch: int = field(default=32, metadata={"help": "questions per forward pass", "min": 1, "max": 4096})


DEFAULTS = LocalityOptions()


@dataclass(frozen=True)
class Reference:
    """The base's greedy answers: prompt and answer token ids per question (answers end in EOS when
    the base stopped before max_new_tokens), and `predicted`: per question the base's argmax at each
    answer position, teacher-forced as `score` reads it (None: the answers themselves are compared)."""
    prompts: tuple
    answers: tuple
    predicted: tuple | None = None

    def part(self, indices, prompts=None) -> "Reference":
        """The questions at `indices` (asked with `prompts` instead, if given), with their predictions."""
        return Reference(tuple(self.prompts[i] for i in indices) if prompts is None else tuple(prompts),
                         tuple(self.answers[i] for i in indices),
                         None if self.predicted is None else tuple(self.predicted[i] for i in indices))


@dataclass(frozen=True)
class Locality:
    exact: int        # questions answered exactly as the base did
    questions: int
    agree: int        # answer tokens that are the argmax
    tokens: int

    @property
    def kept(self) -> float:
        return self.exact / max(self.questions, 1)

    @property
    def agreement(self) -> float:
        return self.agree / max(self.tokens, 1)


def builtin(name: str) -> list[str]:
    """The questions of a built-in list (`probes` or `anchors`), one a line, blank lines skipped."""
    text = resources.files("lorachat").joinpath(f"data/{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def questions_of(examples) -> list[tuple[str, str]]:
    """(instruction, question) as the user asks each instruction/input example; raw text examples
    have no question and are left out."""
    return [asked(e) for e in examples if e.text is None]


def reference(model, tokenizer, questions, options: LocalityOptions = DEFAULTS, on_batch=None) -> Reference:
    """The greedy answers `model` gives (as it is now) to `questions`, (instruction, question) pairs;
    `on_batch(questions answered so far)` after each batch."""
    prompts = [prompt_ids(tokenizer, instruction, question) for instruction, question in questions]
    room = getattr(model.config, "max_position_embeddings", None)
    for number, ids in enumerate(prompts, 1):
        if room is not None and len(ids) + options.max_new_tokens > room:
            raise LorachatError(f"probe question {number} ({questions[number - 1][1][:40]!r}...) is {len(ids)} tokens: "
                                f"with {options.max_new_tokens} answer tokens it is longer than the model reads ({room})")
    made = Reference(tuple(map(tuple, prompts)), tuple(map(tuple, greedy(model, tokenizer, prompts, options, on_batch))))
    return settled(model, tokenizer, made, options)


def settled(model, tokenizer, ref: Reference, options: LocalityOptions = DEFAULTS) -> Reference:
    """`ref` with `predicted` read from `model` (the base, as it is now) in `score`'s own batches."""
    predicted = _scored(model, tokenizer, ref, options, read=True)
    return Reference(ref.prompts, ref.answers, tuple(map(tuple, predicted)))


def greedy(model, tokenizer, prompts: list[list[int]], options: LocalityOptions = DEFAULTS, on_batch=None) -> list[list[int]]:
    """Greedy answer ids per prompt, at most max_new_tokens, cut after the first end token
    (prompts.stop_ids); generated in batches of similar length, left-padded, so padding costs little
    and positions stay right."""
    import torch

    pad, stops = padding_id(tokenizer), stop_ids(tokenizer, model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [None] * len(prompts)
    with evaluating(model):
        for start in range(0, len(order), options.batch):
            rows = order[start:start + options.batch]
            width = max(len(prompts[i]) for i in rows)
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + list(prompts[i]) for i in rows])
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in rows])
            device = model_device(model)
            with torch.inference_mode():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                     max_new_tokens=options.max_new_tokens, min_new_tokens=0, repetition_penalty=1.0,
                                     pad_token_id=pad, eos_token_id=stops or None)
            for i, row in zip(rows, out[:, width:].tolist()):
                ends = [k for k, token in enumerate(row) if token in stops]
                answers[i] = row[:ends[0] + 1] if ends else row
            if on_batch is not None:
                on_batch(start + len(rows))
    return answers


def anchor_questions(instruction: str, pool: int) -> list[tuple[str, str]]:
    """The first `pool` built-in anchor questions, asked under `instruction` (what training rehearses)."""
    return [(instruction, q) for q in builtin(ANCHORS)[:pool]]


def anchor_reference(model, tokenizer, instruction: str, pool: int, options: LocalityOptions = DEFAULTS) -> Reference:
    """The base's answers to the anchor questions (`model` as it is now: a fresh adapter is still
    zero, so the base answers)."""
    return reference(model, tokenizer, anchor_questions(instruction, pool), options)


def as_turns(tokenizer, questions, ref: Reference) -> list[tuple[str, str]]:
    """`questions` with the base's answers in `ref` (in order) as turns of a conversation, the answers
    as shown; those the base left empty are left out."""
    turns = [(q, tokenizer.decode(list(a), skip_special_tokens=True).strip()) for q, a in zip(questions, ref.answers)]
    return [(q, a) for q, a in turns if a]


def items_of(ref: Reference) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per reference answer: prompt masked, the base's answer carries the loss."""
    return [(list(p) + list(a), [IGNORE] * len(p) + list(a)) for p, a in zip(ref.prompts, ref.answers)]


def length_ratio(answers, base_answers, eos) -> float:
    """The median length of `answers` over the median of `base_answers` (token ids each; tokens
    before EOS, all of them where the answer ran to its limit): how an adapter's answers to
    unrelated questions compare with the base's in length (0.12: one short line where the base
    writes a paragraph)."""
    import statistics

    def length(answer) -> int:
        return len(answer) - 1 if answer and eos is not None and answer[-1] == eos else len(answer)

    return statistics.median(map(length, answers)) / max(statistics.median(map(length, base_answers)), 1)


def unchanged_share(answers, base_answers) -> float:
    """The share of `answers` (token ids each, greedy, to EOS or their limit) that are the base's
    answer to the same question token for token: what a user sees unchanged, a stricter test than
    the first `max_new_tokens` that `score` compares."""
    pairs = list(zip(answers, base_answers))
    return sum(list(a) == list(b) for a, b in pairs) / max(len(pairs), 1)


def score(model, tokenizer, ref: Reference, options: LocalityOptions = DEFAULTS) -> Locality:
    """Exact and token agreement of `model` (as it is now) with the reference answers: one
    teacher-forced forward pass per batch, eval mode, no generation."""
    exact, agree = _scored(model, tokenizer, ref, options)
    return Locality(exact=sum(exact), questions=len(exact), agree=agree, tokens=sum(len(a) for a in ref.answers))


def exact_each(model, tokenizer, ref: Reference, options: LocalityOptions = DEFAULTS) -> list[bool]:
    """Per reference question, in order: does `model` answer it exactly as the base did (`score`'s exact)?"""
    return _scored(model, tokenizer, ref, options)[0]


def _scored(model, tokenizer, ref: Reference, options: LocalityOptions, read: bool = False):
    """(exact per question in `ref`'s order, answer tokens where the argmax is the base's), against
    `ref.predicted` where it has them; with `read`, the argmax at each answer position per question."""
    import torch

    items = items_of(ref)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    exact, agree, argmax = [False] * len(items), 0, [None] * len(items)
    with evaluating(model), torch.no_grad(), autocast(model):
        for start in range(0, len(order), options.batch):
            rows = order[start:start + options.batch]
            input_ids, labels, mask = collate([items[i] for i in rows], padding_id(tokenizer), model_device(model))
            logits, targets, positions = answer_logits(model, input_ids, labels, mask)
            if read:
                chosen = logits.argmax(-1)
                for k, i in enumerate(rows):
                    argmax[i] = chosen[positions == k].tolist()
                continue
            if ref.predicted is not None:   # the base's argmax, in the order answer_logits gives: row by row
                targets = torch.tensor([t for i in rows for t in ref.predicted[i]], device=targets.device)
            for i, ok in zip(rows, known(logits, targets, positions, len(rows)).tolist()):
                exact[i] = bool(ok)
            agree += int((logits.argmax(-1) == targets).sum())
    return argmax if read else (exact, agree)
