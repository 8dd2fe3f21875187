"""Whether asking gives each taught answer back verbatim, decided without generating.

Greedy decoding reproduces an answer exactly when, with the answer fed in (teacher forcing), the
argmax at every answer position is the next answer token, EOS included: one forward pass instead
of a generation loop. What asking adds is checked here too, so that `recall k/n` never claims
more than asking returns:
- the question as the user asks it, under the session's instruction (`Asking.instruction`);
- the answer must fit `max_new_tokens` (and the model's positions after the prompt);
- what is shown is the decoded answer cut by the stop rule (prompts.clean_answer): it must equal
  the taught answer;
- `repetition_penalty` is applied to the logits exactly as transformers' generate applies it.

Checks run in length-sorted batches. `all_known` stops at the first example that is not known
(the likely ones first), so a check that fails costs little; `count` is the full exact check,
staged: a pass over each prompt and its first answer token finds most unknown examples for a
fraction of the cost, and only the rest are checked whole. Knows nothing about optimizers,
sessions or files.
"""
from dataclasses import dataclass

from lorachat.core import prompts
from lorachat.core.prompts import DEFAULT_INSTRUCTION, IGNORE, MAX_NEW_TOKENS
from lorachat.scoring.batches import (
    answer_logits,
    autocast,
    collate,
    eval_batches,
    evaluating,
    known,
    model_device,
    padding_id,
    sorted_batches,
)


@dataclass(frozen=True)
class Asking:
    """What asking does with a question: the session's instruction and generation settings."""
    instruction: str = DEFAULT_INSTRUCTION
    max_new_tokens: int = MAX_NEW_TOKENS
    repetition_penalty: float = 1.0
    context: int = 1 << 20          # the model's positions: prompt and answer together


# why a taught answer cannot come back as asked, whatever the weights (shown by :train and :eval)
LONG, SHOWN, INSTRUCTION = "long", "shown", "instruction"


class Recall:
    """The recall checks of one set of encoded examples (`items`: (input_ids, labels) per example,
    as trained) under `asking`."""

    def __init__(self, tokenizer, examples, items, asking: Asking):
        self.tokenizer, self.asking = tokenizer, asking
        self.items = items
        self.questions = [i for i, e in enumerate(examples) if e.text is None]  # what can be asked
        self.asked, self.why = {}, {}
        for i in self.questions:
            self.asked[i], self.why[i] = self._as_asked(examples[i], items[i])
        self.suspects: list[int] = []    # examples the last check found unknown: checked first next time

    def _as_asked(self, example, item):
        """The encoding asking checks (the trained one when the instruction is the same), and the
        reason it can never come back whole, if any."""
        instruction, question = prompts.asked(example)
        if instruction != self.asking.instruction.strip():
            item = prompts.example_ids(self.tokenizer, prompts.Example(self.asking.instruction, question, example.output,
                                                                       history=example.history))
        start = _first_answer(item[1])
        body = item[0][start:]
        body = body[:-1] if body[-1:] == [self.tokenizer.eos_token_id] else body
        if len(body) > min(self.asking.max_new_tokens, self.asking.context - start):
            return item, LONG
        if prompts.clean_answer(self.tokenizer.decode(body, skip_special_tokens=True)) != example.output.strip():
            return item, SHOWN
        return item, None

    # --- the checks -----------------------------------------------------------------------------
    def all_known(self, model, likely_unknown=(), indices=None) -> bool:
        """Whether every example (of `indices`) is known as trained; stops at the first that is not."""
        indices = set(range(len(self.items)) if indices is None else indices)
        first = [i for i in dict.fromkeys([*self.suspects, *likely_unknown]) if i in indices]
        for group_of in (first, sorted(indices - set(first))):
            for group in sorted_batches(group_of, lambda i: len(self.items[i][0])):
                bad = [i for i, ok in zip(group, self._known(model, [self.items[i] for i in group])) if not ok]
                if bad:
                    self.suspects = bad
                    return False
        self.suspects = []
        return True

    def count(self, model, indices=None, likely_known=None, trained_known=False) -> tuple[dict, int, list]:
        """The final check over `indices` (all by default): ({index: known as trained}, how many of
        its questions come back verbatim when asked, the questions known as trained but not under
        the session's instruction). `trained_known`: an exact check just found every one known."""
        indices = list(range(len(self.items)) if indices is None else indices)
        if trained_known:
            trained = dict.fromkeys(indices, True)
        else:
            hints = [(likely_known or {}).get(i, False) for i in indices]
            trained = dict(zip(indices, self.known_all(model, [self.items[i] for i in indices], hints)))
        questions = [i for i in indices if i in self.why and self.why[i] is None]
        extra = [i for i in questions if self.asked[i] is not self.items[i]]
        as_asked = dict(zip(extra, self.known_all(model, [self.asked[i] for i in extra])))
        recalled = sum(1 for i in questions if as_asked.get(i, trained[i]))
        return trained, recalled, [i for i in extra if trained[i] and not as_asked[i]]

    def mark_other_instruction(self, indices) -> None:
        """Questions known as trained that asking under the session's instruction does not return."""
        for i in indices:
            self.why[i] = INSTRUCTION

    def known_all(self, model, items, likely_known=None) -> list[bool]:
        """Known or not for every item, exactly. Items not marked likely known are first checked
        on their prompt and first answer token, and only those right there are checked whole."""
        likely_known = likely_known or [False] * len(items)
        result = [True] * len(items)
        first = [i for i, ok in enumerate(likely_known) if not ok]
        heads = [_head(items[i]) for i in first]
        for group in sorted_batches(range(len(first)), lambda j: len(heads[j][0])):
            for j, ok in zip(group, self._known(model, [heads[j] for j in group])):
                result[first[j]] = ok
        whole = [i for i in range(len(items)) if result[i]]
        for group in sorted_batches(whole, lambda i: len(items[i][0])):
            for i, ok in zip(group, self._known(model, [items[i] for i in group])):
                result[i] = ok
        return result

    def _known(self, model, items) -> list[bool]:
        import torch

        with evaluating(model), torch.no_grad(), autocast(model):
            input_ids, labels, mask = collate(items, padding_id(self.tokenizer), model_device(model))
            logits, targets, rows, positions = answer_logits(model, input_ids, labels, mask, positions=True)
            if self.asking.repetition_penalty != 1.0:
                logits = penalized(logits, input_ids, rows, positions, self.asking.repetition_penalty)
            return known(logits, targets, rows, len(items)).tolist()

    def evaluate(self, model, on_batch=None) -> tuple[float, int]:
        """(mean answer-token loss, questions recalled), both as asked, from one forward pass over
        length-sorted batches: what :eval shows. `on_batch(rows)` after each batch."""
        loss, flags = self.evaluate_each(model, on_batch)
        return loss, sum(flags.values())

    def evaluate_each(self, model, on_batch=None) -> tuple[float, dict]:
        """(mean answer-token loss, {question index: recalled}) as `evaluate`; a question that can
        never come back whole is not recalled."""
        import torch.nn.functional as F

        items = [self.asked.get(i, item) for i, item in enumerate(self.items)]
        loss, tokens, flags = 0.0, 0, [False] * len(items)
        for group, input_ids, logits, targets, rows, positions in eval_batches(model, self.tokenizer, items):
            loss += float(F.cross_entropy(logits, targets, reduction="sum"))
            tokens += len(targets)
            if self.asking.repetition_penalty != 1.0:
                logits = penalized(logits, input_ids, rows, positions, self.asking.repetition_penalty)
            for i, ok in zip(group, known(logits, targets, rows, len(group)).tolist()):
                flags[i] = ok
            if on_batch is not None:
                on_batch(len(group))
        return loss / max(tokens, 1), {i: self.why[i] is None and flags[i] for i in self.questions}

    # --- what to tell the user ------------------------------------------------------------------
    def longest_answer(self) -> int | None:
        """Tokens of the longest taught answer as generated (EOS not counted)."""
        return max((_answer_length(self.items[i], self.tokenizer) for i in self.questions), default=None)

    def reasons(self, indices=None) -> list[str]:
        """One phrase per kind of question (of `indices`, all by default) that cannot come back
        verbatim whatever the weights."""
        counts, indices = {}, set(self.why if indices is None else indices)
        for i, why in self.why.items():
            if why and i in indices:
                counts.setdefault(why, []).append(i)
        lines = []
        if LONG in counts:
            longest = max(_answer_length(self.asked[i], self.tokenizer) for i in counts[LONG])
            lines.append(f"{_n(counts[LONG])} longer than max_new_tokens={self.asking.max_new_tokens} "
                         f"(:set max_new_tokens={longest} to get them whole)")
        if SHOWN in counts:
            lines.append(f"{_n(counts[SHOWN])} cut when shown (a line starting 'Instruction:' ends an answer, "
                         "or the tokenizer does not give the text back as written)")
        if INSTRUCTION in counts:
            lines.append(f"{_n(counts[INSTRUCTION])} trained under another instruction than "
                         f"'{self.asking.instruction}' (:instruction TEXT to ask them as trained)")
        return lines


def penalized(logits, input_ids, rows, positions, penalty: float):
    """`logits` (one row per answer position) as transformers' RepetitionPenaltyLogitsProcessor
    leaves them when generating that position: every token already in the sequence (prompt and
    answer so far) divided by `penalty` (multiplied where negative)."""
    import torch

    vocab = logits.shape[-1]
    seen = torch.zeros_like(logits, dtype=torch.bool)
    for row in rows.unique().tolist():
        at = (rows == row).nonzero()[:, 0]
        first, last = int(positions[at[0]]), int(positions[at[-1]])
        seen[at] |= _one_hot(input_ids[row, :first + 1], vocab).any(0)
        later = input_ids[row, first + 1:last + 1]   # the answer tokens fed in after the first position
        if len(later):
            seen[at[1:]] |= _one_hot(later, vocab).cummax(0).values
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def _one_hot(ids, vocab: int):
    import torch

    ids = ids.clamp(max=vocab)  # ids the output layer cannot produce carry no penalty
    return torch.nn.functional.one_hot(ids, vocab + 1)[:, :vocab].bool()


def _first_answer(labels: list[int]) -> int:
    return next(i for i, t in enumerate(labels) if i > 0 and t != IGNORE)


def _head(item):
    """The item cut after its first answer token: checks the prompt's prediction only."""
    ids, labels = item
    end = _first_answer(labels) + 1
    return ids[:end], labels[:end]


def _answer_length(item, tokenizer) -> int:
    ids, labels = item
    answer = ids[_first_answer(labels):]
    return len(answer) - (answer[-1:] == [tokenizer.eos_token_id])


def _n(indices) -> str:
    return f"{len(indices)} answer" + ("" if len(indices) == 1 else "s")
