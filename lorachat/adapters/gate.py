"""The ask-time gate: the active adapter answers only questions that ask what it was taught; the
base answers the rest, exactly as the base.

Training alone cannot keep a real model's unrelated answers exact (bench/RESULTS.md "Locality on
smol"), so lorachat decides per question, before answering it, from the adapter's keys (what it was
taught: instruction, question and answer per lesson, in lorachat.json) and the base's reading
(routing/router.py): a question that rephrases a taught one is answered by the adapter, asked that
taught question, so the taught answer comes back; a look-alike (another city's mayor) and every
other question go to the base. A taught question asked as taught is always the adapter's.

On (`:set gate=auto`) for models of at least 50M parameters, whose readings mean something; off
for the small random ones the tests build. An adapter whose lessons include raw text, or that has no
record of what it was taught (made elsewhere), always answers. lorachat only: PEFT, `:export` and
vLLM apply an adapter to every question. Knows nothing about terminals, training or the REPL.
"""
import contextlib
from dataclasses import dataclass

from lorachat.adapters import base_cache, live
from lorachat.adapters.paths import adapter_path
from lorachat.adapters.provenance import read_meta
from lorachat.core.prompts import asked, prompt_ids
from lorachat.models.loader import SMALL_MODEL, base_size
from lorachat.routing import reading, router
from lorachat.routing.router import GATE_AT, Key
from lorachat.scoring import locality
from lorachat.scoring.batches import model_device

STATE = "gate"           # session.extensions: the gate's state
BACKGROUND_VERSION = 2   # of how reading makes the background: a change makes new files on disk
__all__ = ["GATE_AT"]


def taught_keys(examples) -> list[dict] | None:
    """What `examples` teach, as lorachat.json records it: one {instruction, question, answer} per
    distinct lesson; None when some lesson is raw text (such an adapter is meant for every question)."""
    if any(e.text is not None for e in examples):
        return None
    keys = {}   # (instruction, question, answer) -> taught alone (with no earlier turns) at least once
    for e in examples:
        instruction, question = asked(e)
        keys[(instruction, question, e.output.strip())] = keys.get((instruction, question, e.output.strip())) or not e.history
    return [dict(instruction=i, question=q, answer=a, **({} if alone else {"after_turns": True}))
            for (i, q, a), alone in keys.items()]


def taught_questions(examples) -> list[str] | None:
    """The questions `examples` teach, as a user types them (lorachat.json's `questions`)."""
    keys = taught_keys(examples)
    return None if keys is None else sorted({k["question"] for k in keys})


def enabled(session) -> bool:
    setting = session.settings.gate
    if setting == "auto":
        state = _state(session)
        if "real" not in state:
            state["real"] = base_size(session.loaded.model) >= SMALL_MODEL
        return state["real"]
    return setting == "on"


def remember(session, name: str, keys: list[dict] | None, nots=()) -> None:
    """What loaded adapter `name` was taught (a new one, before its lorachat.json is on disk)."""
    _state(session)["taught"][name] = _Taught(keys_from(keys, None, list(nots)), _loaded(session, name))


def decide(session, name: str, question: str) -> router.Decision | None:
    """Who answers `question` while adapter `name` is active; None when the gate does not decide
    (off, or the adapter has no record of its lessons: it answers every question)."""
    return decide_each(session, name, [question])[0]


def decide_each(session, name: str, questions: list[str]) -> list:
    """decide for each of `questions`, read in shared forward passes (router.decide_each)."""
    keys = entry(session, name).keys if enabled(session) else None
    if keys is None:
        return [None] * len(questions)
    back = _background(session)
    with _as_base(session):
        return router.decide_each(session.model, session.tokenizer, keys, back, questions, session.settings.gate_at)


def routed_each(session, name: str | None, questions: list[str]) -> list[bool]:
    """Whether adapter `name` (None: the base) answers each of `questions` under the gate."""
    if name is None:
        return [False] * len(questions)
    return [d is None or d.key is not None for d in decide_each(session, name, questions)]


def routed(session, name: str | None, question: str) -> bool:
    return routed_each(session, name, [question])[0]


def asks(session, name: str, question: str) -> str | None:
    """The question adapter `name` is asked for `question`: the taught question it matches, the
    question itself when the gate does not decide, None when the base answers it."""
    decision = decide(session, name, question)
    return question if decision is None else decision.asks


@contextlib.contextmanager
def answering(session, question: str):
    """Yields (the question the model answers in `question`'s place, whether it is asked alone), with
    the model as the gate says: the active adapter asked the taught question it matches (alone, as
    it was taught, unless it was taught only after earlier turns), or the base for the duration. The
    decision is kept for `:why`."""
    name = session.active_adapter
    decision = decide(session, name, question) if name is not None else None
    _state(session)["last"] = (question, name, decision)
    if decision is None:
        yield question, False
    elif decision.key is not None:
        yield decision.asks, decision.alone
    else:
        with live.switch(session).disabled():
            yield question, False


def last(session):
    """(question, adapter name or None, Decision or None) of the last question asked, or None."""
    return _state(session).get("last")


def kept(session, name: str, questions: list[str], ref: locality.Reference,
         options: locality.LocalityOptions = locality.DEFAULTS) -> locality.Locality:
    """locality.score of adapter `name` (active) on `ref`, the base's answers to `questions`, as
    asking would answer them: a question the gate leaves to the base is the base's, exactly; one it
    routes is the adapter's answer to the taught question it matches."""
    if not enabled(session):
        return locality.score(session.model, session.tokenizer, ref, options)
    asked_as = [q if d is None else d.asks for q, d in zip(questions, decide_each(session, name, questions))]
    near = [i for i, a in enumerate(asked_as) if a is not None]
    tokens = sum(len(a) for a in ref.answers)
    if not near:
        return locality.Locality(exact=len(questions), questions=len(questions), agree=tokens, tokens=tokens)
    prompts = tuple(tuple(prompt_ids(session.tokenizer, session.instruction, asked_as[i])) if asked_as[i] != questions[i]
                    else ref.prompts[i] for i in near)
    scored = locality.score(session.model, session.tokenizer, ref.part(near, prompts), options)
    others = len(questions) - len(near)
    return locality.Locality(exact=scored.exact + others, questions=len(questions),
                             agree=scored.agree + tokens - scored.tokens, tokens=tokens)


def describe(session, name: str | None) -> str:
    """One line for :info: what the gate does for the active adapter."""
    if not enabled(session):
        return "off" + (" (auto: a model under 50M parameters)" if session.settings.gate == "auto" else "")
    at = f"on at {session.settings.gate_at:g}"
    if name is None:
        return f"{at} (no adapter active)"
    keys = entry(session, name).keys
    if keys is None:
        return f"{at}; '{name}' answers every question (no record of what it was taught)"
    count, back = len({(k.instruction, k.answer) for k in keys.keys}), len(keys.nots)
    return (f"{at}: '{name}' answers questions that ask what its {count} taught "
            f"{'answers answer' if count != 1 else 'answer answers'}, the base the rest"
            + (f" ({back} question{'s' if back != 1 else ''} sent back with :unroute)" if back else ""))


def lessons(session, name: str) -> str | None:
    """What adapter `name`'s own lessons say of the gate, in words (None when it does not decide, or
    there are fewer than two taught answers to tell apart): routing/router.py's `apart`."""
    keys = entry(session, name).keys if enabled(session) else None
    if keys is None or len({(k.instruction, k.answer) for k in keys.keys if k.answer is not None}) < 2:
        return None
    back = _background(session)
    with _as_base(session):
        kept, total, found, phrasings, mixed = router.apart(session.model, session.tokenizer, keys, back, session.settings.gate_at)
    # kept: a taught question asked without its own key goes to the base, not to another taught answer
    words = f"gate: {kept}/{total} taught questions told apart (without its own key, each goes to the base, not to another taught answer)"
    if mixed:
        question, reached = mixed[0]
        more = f" and {len(mixed) - 1} more" if len(mixed) > 1 else ""
        words += f"; not apart: {_clipped(question)!r} would reach the answer of {_clipped(reached.question)!r}{more}"
    return words + (f"; {found}/{phrasings} phrasings reach their answer without their own key" if phrasings else "")


def _clipped(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


# --- state ---------------------------------------------------------------------------------------

def _state(session) -> dict:
    return session.extensions.setdefault(STATE, {"taught": {}})


@dataclass
class _Taught:
    keys: router.Keys | None     # None: no record (the adapter answers every question)
    loaded: object               # PEFT's config object of the adapter as loaded: a reload makes a new one


def keys_from(records, questions, nots=None) -> router.Keys | None:
    """router.Keys from lorachat.json's `keys` (or, before them, its `questions`) and `not_keys`, or None."""
    if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
        try:
            return router.Keys([_key(r) for r in records], nots=[_key(r) for r in not_records(nots)])
        except KeyError:
            return None
    if isinstance(questions, list) and questions and all(isinstance(q, str) for q in questions):
        return router.Keys([Key(q.strip()) for q in questions])
    return None


def _key(record: dict) -> Key:
    return Key(str(record["question"]).strip(), str(record["answer"]).strip(), str(record["instruction"]).strip(),
               bool(record.get("added", False)), not record.get("after_turns", False))


def not_records(nots) -> list[dict]:
    """lorachat.json's `not_keys` as far as they are whole records (a damaged one is left out: the
    question is then routed as before it was sent back)."""
    whole = lambda r: isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("question", "answer", "instruction"))  # noqa: E731
    return [r for r in nots if whole(r)] if isinstance(nots, list) else []


def _loaded(session, name: str):
    model = live.peft_model(session)
    return model.peft_config.get(name) if model is not None else None


def entry(session, name: str) -> _Taught:
    """What adapter `name` was taught, read from its lorachat.json once per load."""
    taught, loaded = _state(session)["taught"], _loaded(session, name)
    if name not in taught or taught[name].loaded is not loaded:
        origin = live.state(session).origins.get(name)   # the folder it came from, which may hold another now
        meta = (origin[1] if origin else read_meta(adapter_path(session, name))) or live.state(session).unsaved.get(name) or {}
        taught[name] = _Taught(keys_from(meta.get("keys"), meta.get("questions"), meta.get("not_keys")), loaded)
    return taught[name]


def _as_base(session):
    current = live.switch(session)
    return current.disabled() if current is not None else contextlib.nullcontext()


def _background(session) -> reading.Background:
    """reading.background of the base; its mean and spread made once per checkpoint and kept on
    disk (a second each session on smol otherwise, before the first gated answer); a file that
    cannot be read, or holds something else, is made again."""
    state = _state(session)
    if "background" not in state:
        state["background"] = _stored_background(session)
    return state["background"]


def _stored_background(session) -> reading.Background:
    from safetensors import SafetensorError
    from safetensors.torch import load, save

    model, tokenizer = session.model, session.tokenizer
    path = base_cache.path(session, "gate", [BACKGROUND_VERSION, reading.LAYER, reading.BACKGROUND], ".safetensors")
    width = (model.config.get_text_config().hidden_size,)
    with contextlib.suppress(OSError, SafetensorError, KeyError, ValueError):
        if path is not None:
            kept = load(path.read_bytes())
            if all(kept[k].shape == width and kept[k].isfinite().all() for k in ("mean", "spread")):
                device = model_device(model)
                return reading.with_weights(tokenizer, kept["mean"].to(device), kept["spread"].to(device))
    with _as_base(session):
        made = reading.background(model, tokenizer)
    if path is not None:
        base_cache.write(path, save({k: getattr(made, k).detach().float().cpu().contiguous() for k in ("mean", "spread")}))
    return made
