"""The ask-time gate: the active adapter answers only questions near one it was taught; the base
answers the rest, exactly as the base.

Training alone cannot keep a real model's unrelated answers exact (bench/RESULTS.md "Locality on
smol": every unrelated logit would have to move by less than ~0.04), so lorachat decides per
question, before answering it: the cosine of the question's vector as the base reads it
(scoring/nearness.py) to the nearest taught question's. At `:set gate_at` (0.5) or more the adapter
answers; below it the base does. A taught question is 1.0 from itself, so recall is untouched.

On (`:set gate=auto`) for models of at least 50M parameters, whose hidden states mean something; off
for the small random ones the tests build. An adapter whose lessons include raw text, or that has no
record of what it was taught (made elsewhere), always answers. lorachat only: PEFT, `:export` and
vLLM apply an adapter to every question. Knows nothing about terminals, training or the REPL.
"""
import contextlib
from dataclasses import dataclass

from lorachat.adapters import base_cache, live
from lorachat.adapters.paths import adapter_path
from lorachat.adapters.provenance import read_meta
from lorachat.core.prompts import asked
from lorachat.models.loader import SMALL_MODEL, base_size
from lorachat.scoring import locality, nearness
from lorachat.scoring.batches import model_device

KEY = "gate"          # session.extensions: the gate's state; lorachat.json: the taught questions
BACKGROUND_VERSION = 1   # of how nearness reads the background: a change makes new files on disk
GATE_AT = 0.5         # `:set gate_at`'s default: on smol it routes 19 of 20 paraphrases and 28 of 303 probes


def taught_questions(examples) -> list[str] | None:
    """The questions `examples` teach, as a user types them (what lorachat.json records); None
    when some lesson is raw text: such an adapter is meant for every question."""
    if any(e.text is not None for e in examples):
        return None
    return sorted({asked(e)[1] for e in examples})


def enabled(session) -> bool:
    setting = session.settings.gate
    if setting == "auto":
        state = _state(session)
        if "real" not in state:
            state["real"] = base_size(session.loaded.model) >= SMALL_MODEL
        return state["real"]
    return setting == "on"


def remember(session, name: str, questions: list[str] | None) -> None:
    """What loaded adapter `name` was taught (a new one, before its lorachat.json is on disk)."""
    _state(session)["taught"][name] = _Taught(questions, _loaded(session, name))


def similarity(session, name: str, questions: list[str]) -> list[float] | None:
    """The cosine of each of `questions` to the nearest question adapter `name` was taught; None
    when the adapter has no record of its questions (it answers everything)."""
    taught = _taught_vectors(session, name)
    if taught is None:
        return None
    return (_vectors(session, questions) @ taught.T).max(1).values.tolist()


def routed_each(session, name: str | None, questions: list[str]) -> list[bool]:
    """Whether adapter `name` (None: the base) answers each of `questions` under the gate."""
    if name is None or not enabled(session) or not questions:
        return [name is not None] * len(questions)
    near = similarity(session, name, questions)
    if near is None:
        return [True] * len(questions)
    return [n >= session.settings.gate_at - 1e-6 for n in near]   # a taught question is 1.0 from itself


def routed(session, name: str | None, question: str) -> bool:
    return routed_each(session, name, [question])[0]


@contextlib.contextmanager
def answering(session, question: str):
    """The model answers `question` as the gate says: the active adapter, or the base for the duration."""
    name = session.active_adapter
    if name is None or routed(session, name, question):
        yield
        return
    with live.switch(session).disabled():
        yield


def kept(session, name: str, questions: list[str], ref: locality.Reference,
         options: locality.LocalityOptions = locality.DEFAULTS) -> locality.Locality:
    """locality.score of adapter `name` (active) on `ref`, the base's answers to `questions`, under
    the gate: a question it does not route to the adapter is answered by the base, exactly."""
    if not enabled(session):
        return locality.score(session.model, session.tokenizer, ref, options)
    near = [i for i, ok in enumerate(routed_each(session, name, questions)) if ok]
    tokens = sum(len(a) for a in ref.answers)
    if not near:
        return locality.Locality(exact=len(questions), questions=len(questions), agree=tokens, tokens=tokens)
    part = locality.Reference(tuple(ref.prompts[i] for i in near), tuple(ref.answers[i] for i in near))
    scored = locality.score(session.model, session.tokenizer, part, options)
    others = len(questions) - len(near)
    return locality.Locality(exact=scored.exact + others, questions=len(questions),
                             agree=scored.agree + tokens - scored.tokens, tokens=tokens)


def describe(session, name: str | None) -> str:
    """One line for :info: what the gate does for the active adapter."""
    if not enabled(session):
        return "off" + (" (auto: a model under 50M parameters)" if session.settings.gate == "auto" else "")
    if name is None:
        return f"on at {session.settings.gate_at:g} (no adapter active)"
    questions = _questions(session, name)
    if questions is None:
        return f"on at {session.settings.gate_at:g}; '{name}' answers every question (no record of taught questions)"
    return (f"on at {session.settings.gate_at:g}: '{name}' answers questions near its {len(questions)} taught "
            f"one{'s' if len(questions) != 1 else ''}, the base the rest")


# --- embeddings ----------------------------------------------------------------------------------

def _state(session) -> dict:
    return session.extensions.setdefault(KEY, {"taught": {}})


@dataclass
class _Taught:
    questions: list[str] | None
    loaded: object              # PEFT's config object of the adapter as loaded: a reload makes a new one
    vectors: object = None      # their embeddings, made on first need


def _loaded(session, name: str):
    model = live.peft_model(session)
    return model.peft_config.get(name) if model is not None else None


def _entry(session, name: str) -> _Taught:
    """What adapter `name` was taught, read from its lorachat.json once per load."""
    taught, loaded = _state(session)["taught"], _loaded(session, name)
    if name not in taught or taught[name].loaded is not loaded:
        origin = live.state(session).origins.get(name)   # the folder it came from, which may hold another now
        questions = ((origin[1] if origin else read_meta(adapter_path(session, name))) or {}).get("questions")
        ok = isinstance(questions, list) and questions and all(isinstance(q, str) for q in questions)
        taught[name] = _Taught(questions if ok else None, loaded)
    return taught[name]


def _questions(session, name: str) -> list[str] | None:
    return _entry(session, name).questions


def _taught_vectors(session, name: str):
    entry = _entry(session, name)
    if entry.questions is not None and entry.vectors is None:
        entry.vectors = _vectors(session, entry.questions)
    return None if entry.questions is None else entry.vectors


def _vectors(session, questions: list[str]):
    """Unit vectors of `questions` as the base reads them (nearness.vectors), the adapters off."""
    state, current = _state(session), live.switch(session)
    with current.disabled() if current is not None else contextlib.nullcontext():
        if "mean" not in state:
            state["mean"] = _background(session)
        return nearness.vectors(session.model, session.tokenizer, questions, state["mean"])


def _background(session):
    """nearness.background of the base, made once per checkpoint and kept on disk (a second each
    session on smol otherwise, before the first gated answer); a file that cannot be read, or
    holds something else, is made again."""
    from safetensors import SafetensorError
    from safetensors.torch import load, save

    path = base_cache.path(session, "gate", [BACKGROUND_VERSION, nearness.background_questions()], ".safetensors")
    with contextlib.suppress(OSError, SafetensorError, KeyError, ValueError):
        if path is not None:
            mean = load(path.read_bytes())["mean"]
            if mean.shape == (session.model.config.get_text_config().hidden_size,) and mean.isfinite().all():
                return mean.to(model_device(session.model))
    mean = nearness.background(session.model, session.tokenizer)
    if path is not None:
        base_cache.write(path, save({"mean": mean.detach().float().cpu().contiguous()}))
    return mean
