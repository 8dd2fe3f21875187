"""Who answers a question: the adapter, asked the taught question it matches, or the base.

An adapter's keys are what it was taught: (instruction, question, answer) per lesson, and phrasings
added later for a taught answer. A question is decided in two steps, both read by the base:
1. shortlist: the TOP keys (one) the question covers most (reading.coverage), at SHORTLIST or more; a
   question near no key goes to the base after a tenth of a forward pass (most questions);
2. check: for each, the share of the taught question's lift of its answer that this question gives
   it (lift.share); the best at `at` or more answers, else the base does.
A taught question asked as taught is its own key at share 1.0, with no check. The adapter then
answers the key's trained question (a phrasing's trained sibling), so a rephrasing gets the taught
answer, not a blend of two (bench/RESULTS.md, "Gate 2").
3. not keys: questions the user sent back to the base (`:unroute`) after they reached a taught
   answer. A question that passes the check for an answer with not keys goes to the base when it is
   at least as near one of them as to every question taught or added for that answer (`both_ways`:
   each reading's coverage of the other, averaged), so the question and its rephrasings stay the
   base's (bench/RESULTS.md, "Gate 2": the nearest labelled question decides, measured on held-out
   rephrasings).

Keys recorded before lorachat kept answers (lorachat.json with `questions` only) are decided by
the shortlist alone. Model-level: knows nothing about sessions, adapters or files; the caller turns
the adapters off while it decides.
"""
from dataclasses import dataclass, field

from lorachat.core.prompts import DEFAULT_INSTRUCTION
from lorachat.routing import lift, reading

SHORTLIST = 0.4      # coverage a key needs to be checked: every paraphrase of the tune set had it, 1 of 303 probes
TOP = 1              # keys checked per question, the most covered first (2 decided the same on both sets: bench/RESULTS.md)
GATE_AT = 0.72       # `:set gate_at`'s default: the share of lift a question must give (tune set, bench/RESULTS.md)
CHUNK = 64           # keys read per forward pass


@dataclass(frozen=True)
class Key:
    question: str
    answer: str | None = None        # None: recorded without its answer (decided by coverage alone)
    instruction: str = DEFAULT_INSTRUCTION
    added: bool = False              # a phrasing added after training: the adapter is asked its trained sibling
    alone: bool = True               # taught alone (not only after earlier turns): asked alone, as taught


@dataclass(frozen=True)
class Decision:
    key: Key | None           # the key that answers (the adapter, asked `asks`); None: the base answers
    asks: str | None          # the question the adapter is asked
    nearest: Key | None       # the key the question covers most
    coverage: float = 0.0     # of `nearest`
    checked: Key | None = None   # the key whose check scored best (None: none checked)
    share: float | None = None   # its share of lift
    unrouted: Key | None = None  # the not key that sent it to the base after the check passed
    alone: bool = False          # the adapter is asked `asks` without the conversation's turns (taught so)


@dataclass
class Keys:
    """One adapter's keys, with their readings (made on first need) and their answers' log
    probabilities after the taught question and after NULL (made when a key is first checked)."""
    keys: list
    readings: list | None = None
    taught: dict = field(default_factory=dict)   # key index -> (log P after its question, after NULL)
    nots: list = field(default_factory=list)     # Keys sent back to the base, each with the answer it reached
    not_readings: list | None = None

    def asks(self, key: Key) -> str:
        """The question the adapter was trained on for `key`'s answer: `key`'s own unless it was added."""
        return self.trained(key).question

    def trained(self, key: Key) -> Key:
        """The key the adapter was trained on for `key`'s answer: `key` itself unless it was added."""
        if not key.added:
            return key
        return next((k for k in self.keys if not k.added and k.answer == key.answer
                     and k.instruction == key.instruction), key)


def decide(model, tokenizer, keys: Keys, back: reading.Background, question: str, at: float = GATE_AT,
           without=()) -> Decision:
    """Who answers `question` among `keys` (the model as the base: the caller turns adapters off),
    the keys at the indices `without` left out (what the lessons alone can measure, `apart`)."""
    return decide_each(model, tokenizer, keys, back, [question], at, without)[0]


def decide_each(model, tokenizer, keys: Keys, back: reading.Background, questions: list[str], at: float = GATE_AT,
                without=()) -> list[Decision]:
    """decide for each of `questions`, their readings made CHUNK to a forward pass (:eval's and
    :train's probes: one pass instead of one each)."""
    questions = [q.strip() for q in questions]
    taught = {key.question: i for i, key in reversed(list(enumerate(keys.keys))) if i not in without}
    unread = sorted({q for q in questions if q not in taught})
    if unread and len(without) < len(keys.keys):
        _read_keys(model, tokenizer, keys, back)
        read = dict(zip(unread, (r for i in range(0, len(unread), CHUNK)
                                 for r in reading.read(model, tokenizer, unread[i:i + CHUNK], back))))
    else:
        read = {}
    return [_decided(model, tokenizer, keys, q, read.get(q), taught.get(q), at, without) for q in questions]


def _read_keys(model, tokenizer, keys: Keys, back: reading.Background) -> None:
    for texts, attribute in (([k.question for k in keys.keys], "readings"), ([k.question for k in keys.nots], "not_readings")):
        if getattr(keys, attribute) is None:
            setattr(keys, attribute, [r for i in range(0, len(texts), CHUNK)
                                      for r in reading.read(model, tokenizer, texts[i:i + CHUNK], back)])


def both_ways(a: reading.Reading, b: reading.Reading) -> float:
    """How near two questions are, read by the shortlist: each one's coverage of the other, averaged
    (a short question, mostly a subject's name, is not near every question about that subject)."""
    return (reading.coverage(a, [b])[0] + reading.coverage(b, [a])[0]) / 2


def _unrouted(keys: Keys, key: Key, read, without) -> Key | None:
    """The not key for `key`'s answer that `read` is at least as near as to every question taught
    or added for that answer, or None."""
    same = lambda k: k.answer == key.answer and k.instruction == key.instruction  # noqa: E731
    nots = [i for i, k in enumerate(keys.nots) if same(k)]
    if not nots:
        return None
    near = max(both_ways(read, keys.readings[i]) for i, k in enumerate(keys.keys) if same(k) and i not in without)
    best = max(nots, key=lambda i: both_ways(read, keys.not_readings[i]))
    return keys.nots[best] if both_ways(read, keys.not_readings[best]) >= near else None


def _decided(model, tokenizer, keys: Keys, question: str, read, taught: int | None, at: float, without) -> Decision:
    if taught is not None:   # asked as taught: no reading needed
        key = keys.keys[taught]
        checked = key if key.answer is not None else None   # a key recorded without its answer has no check
        return Decision(key, keys.asks(key), key, 1.0, checked, 1.0 if checked is not None else None,
                        alone=keys.trained(key).alone)
    if len(without) >= len(keys.keys):
        return Decision(None, None, None)
    near = reading.coverage(read, keys.readings)
    order = sorted((i for i in range(len(near)) if i not in without), key=lambda i: -near[i])
    nearest = keys.keys[order[0]]
    listed = [i for i in order[:TOP] if near[i] >= SHORTLIST]
    if not listed:
        return Decision(None, None, nearest, near[order[0]])
    unknown = [i for i in listed if keys.keys[i].answer is None]
    if unknown:   # no answer to check against: the shortlist decides
        key = keys.keys[unknown[0]]
        return Decision(key, keys.asks(key), nearest, near[order[0]])
    shares = _shares(model, tokenizer, keys, listed, question)
    best = max(listed, key=lambda i: shares[i])
    key = keys.keys[best]
    answers = shares[best] >= at - 1e-9
    unrouted = _unrouted(keys, key, read, without) if answers else None
    answers = answers and unrouted is None
    return Decision(key if answers else None, keys.asks(key) if answers else None, nearest, near[order[0]],
                    key, shares[best], unrouted, alone=answers and keys.trained(key).alone)


def _shares(model, tokenizer, keys: Keys, listed: list[int], question: str) -> dict:
    """lift.share of `question` for each listed key, in one batch with the keys' own rows not made yet."""
    rows, where = [], {}
    for i in listed:
        key = keys.keys[i]
        where[i] = len(rows)
        rows.append((key.instruction, question, key.answer))
        if i not in keys.taught:
            rows += [(key.instruction, key.question, key.answer), (key.instruction, lift.NULL, key.answer)]
    sums = lift.logprobs(model, tokenizer, rows)
    out = {}
    for i in listed:
        if i not in keys.taught:
            keys.taught[i] = (sums[where[i] + 1], sums[where[i] + 2])
        out[i] = lift.share(sums[where[i]], *keys.taught[i])
    return out


def apart(model, tokenizer, keys: Keys, back: reading.Background, at: float = GATE_AT) -> tuple[int, int, int, int, list]:
    """What the lessons alone say of the gate: (taught questions the other answers' keys leave to
    the base, of how many; phrasings that reach their own answer without their own key, of how
    many; (taught question, the key it reached) for each not left to the base). Each taught question
    is a look-alike of the others' (another subject in the same form: "What is SION ...?" beside
    "What is SOH ...?"); a phrasing is a question whose answer another key also has."""
    kept = total = found = phrasings = 0
    mixed = []
    for i, key in enumerate(keys.keys):
        if key.answer is None:
            continue
        same = [j for j, k in enumerate(keys.keys) if k.answer == key.answer and k.instruction == key.instruction]
        total += 1
        reached = decide(model, tokenizer, keys, back, key.question, at, without=set(same)).key
        kept += reached is None
        if reached is not None:
            mixed.append((key.question, reached))
        if len(same) > 1:
            phrasings += 1
            found += (decide(model, tokenizer, keys, back, key.question, at, without={i}).key or Key("")).answer == key.answer
    return kept, total, found, phrasings, mixed
