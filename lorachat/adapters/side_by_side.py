"""Adapters side by side: `:compare` (one question, every adapter's greedy answer) and `:eval` (a
dataset's loss and recall as asked, and what each adapter keeps of the base's answers to probe
questions), and the session's cache of the base's answers those measurements compare with. The
maths is scoring/'s; this module switches adapters (live.py) and knows nothing about terminals.
The base's answers are also kept on disk (base_answers), so a new session over the same checkpoint
does not generate them again.
"""
import json

from lorachat.adapters import base_cache, gate, live
from lorachat.adapters.paths import BASE
from lorachat.core import durable, prompts
from lorachat.core.errors import LorachatError
from lorachat.core.names import check_name
from lorachat.scoring import locality
from lorachat.scoring.recall import Recall

MIXED_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
CACHE_SIZE = 4  # base references kept per session: the probes, the anchors, a dataset or two
BASE_ANSWERS_VERSION = 1   # of how lorachat makes the base's answers (locality.greedy): a change makes new files


def compare(session, names: list[str], question: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Greedy answers to `question` from each of `names` ('base' for none), in one mixed-adapter
    batch where PEFT supports it and the base is float32, else one adapter at a time through the
    switch, as asking answers (in bf16 or fp16 a batch of several rows rounds otherwise than asking's
    one, and the answers part after a few words); under the gate an
    adapter answers as asking would: the taught question `question` asks, or not at all (the base
    does). Returns (notes, [(name, answer)])."""
    extra = [n for n in names if n != BASE]
    for n in extra:
        check_name(n, "adapter")
    if len(extra) > session.settings.max_loaded:
        raise LorachatError(f"can compare at most max_loaded={session.settings.max_loaded} adapters at once")
    notes = live.load_all(session, names)
    asked = {n: question if n == BASE else gate.asks(session, n, question) for n in names}
    based = [n for n in extra if asked[n] is None]   # the gate leaves these to the base
    if based:
        one = len(based) == 1
        notes.append(f"the gate leaves this question to the base for {', '.join(based)} (it asks nothing "
                     f"{'it was' if one else 'they were'} taught; :why says why, :set gate=off shows "
                     f"{'its own answer' if one else 'their own answers'})")
    notes += [f"{n} answers it as its taught question {asked[n]!r}" for n in extra if asked[n] not in (None, question)]
    answers = {}
    for text in dict.fromkeys(a or question for a in asked.values()):   # one batch per question asked
        group = [n for n in names if (asked[n] or question) == text]
        rows = _generate(session, [BASE if asked[n] is None else n for n in group],
                         prompts.prompt_ids(session.tokenizer, session.instruction, text))
        answers.update(zip(group, rows))
    return notes, [(n, answers[n]) for n in names]


def _generate(session, answering: list[str], ids: list[int]) -> list[str]:
    """Each of `answering` (adapter names, BASE for none) answers the prompt `ids`, greedy."""
    import torch

    settings = session.settings
    generation = dict(max_new_tokens=settings.max_new_tokens, do_sample=False, repetition_penalty=settings.repetition_penalty,
                      pad_token_id=session.tokenizer.pad_token_id,
                      eos_token_id=prompts.stop_ids(session.tokenizer, session.loaded.model) or None)
    model = live.peft_model(session)
    batch = torch.tensor([ids] * len(answering), device=session.loaded.model.device)
    with torch.inference_mode():
        if model is None or session.loaded.dtype != torch.float32:   # no adapter was ever loaded, or half precision
            rows = _one_at_a_time(session, answering, batch[:1], generation)
        else:
            labels = [MIXED_BASE if n == BASE else n for n in answering]
            try:
                with live.switch(session).unmerged(enabled=True):
                    rows = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), adapter_names=labels,
                                          **generation)
            except (ValueError, TypeError, KeyError):
                # PEFT refuses the mixed batch in a layer's _check_forward_args: a layer that sees
                # (batch x seq) rows, not the batch (OPT's fc1/fc2), DoRA, a layer type without
                # mixed batches; a modules_to_save copy that not every adapter has is a KeyError.
                # The first forward fails, so this costs one prompt's pass.
                rows = _one_at_a_time(session, answering, batch[:1], generation)
    return [decode_answer(session.tokenizer, row[len(ids):].tolist(), generation["eos_token_id"]) for row in rows]


def _one_at_a_time(session, names: list[str], batch, generation) -> list:
    """Each of `names` answers alone, as `:use NAME` then asking would; the active adapter is restored."""
    import torch

    previous, rows = session.active_adapter, []
    try:
        for n in names:
            live.activate(session, None if n == BASE else n)
            rows += session.model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), **generation)
    finally:
        live.activate(session, previous if previous in live.loaded_names(session) else None)
    return rows


def decode_answer(tokenizer, ids: list[int], stops=None) -> str:
    """What streaming shows for these generated ids: up to the first of `stops` (default: the
    tokenizer's EOS), specials dropped, cleaned."""
    stops = [tokenizer.eos_token_id] if stops is None else stops
    ends = [k for k, i in enumerate(ids) if i in stops]
    ids = ids[:ends[0]] if ends else ids
    return prompts.clean_answer(tokenizer.decode(ids, skip_special_tokens=True))


def evaluate(session, names: list[str], encoded, on_batch=None, probes=(), options=None) -> tuple[list[str], list[tuple]]:
    """(name, mean answer-token loss, recall k as asked, locality.Locality or None) for each of
    `names` on `encoded` (batches.encode's result); the locality is measured on `probes`,
    (instruction, question) pairs, against the base's greedy answers (computed once per session).
    The active adapter is restored afterwards."""
    options = options or locality.DEFAULTS
    notes = live.load_all(session, names)
    checker = Recall(session.tokenizer, encoded.examples, encoded.items, session.asking())
    ref = session_reference(session, list(probes), options) if probes else None
    asked = {i: prompts.asked(encoded.examples[i])[1] for i in checker.questions}
    previous, rows, base = session.active_adapter, [], None
    try:
        for n in [BASE] + [n for n in names if n != BASE]:   # the base first: the gate answers some with it
            live.activate(session, None if n == BASE else n)
            kept = None if not ref else locality.score(session.model, session.tokenizer, ref, options) if n == BASE \
                else gate.kept(session, n, [q for _, q in probes], ref, options)
            loss, flags = checker.evaluate_each(session.model, on_batch)
            if n == BASE:
                base = flags
            else:   # as asked: a question the gate leaves to the base is recalled as the base recalls it
                near = dict(zip(asked, gate.routed_each(session, n, list(asked.values()))))
                flags = {i: ok if near[i] else base[i] for i, ok in flags.items()}
            if n in names:
                rows.append((n, loss, sum(flags.values()), kept))
    finally:
        live.activate(session, previous if previous in live.loaded_names(session) else None)
        live.make_room(session, keep={session.active_adapter}, extra=0)   # evaluated together, kept to max_loaded after
    return notes, rows


def whole_answers(session, count: int = locality.LENGTH_PROBES) -> dict:
    """The active adapter's whole answers, applied to every question (no gate: what :export and
    vLLM serve), to the first `count` built-in probes against the base's (cached): {"length":
    locality.length_ratio, "unchanged": locality.unchanged_share, "answers": how many}."""
    options = locality.LocalityOptions(max_new_tokens=locality.LENGTH_TOKENS)
    questions = probe_questions(session, questions=locality.builtin(locality.PROBES)[:count])
    base = session_reference(session, questions, options)
    answers = locality.greedy(session.model, session.tokenizer, [list(p) for p in base.prompts], options)
    return dict(length=locality.length_ratio(answers, base.answers, session.tokenizer.eos_token_id),
                unchanged=locality.unchanged_share(answers, base.answers), answers=len(answers))


def ungated_record(scored: locality.Locality, whole: dict, scale: float = 1.0) -> dict:
    """lorachat.json's `ungated` record (adapters/travel.py says it on the way out): kept and agree of
    `scored` (the adapter on the probes, no gate) and its `whole_answers`, at live scale `scale`. Not
    rounded: what `:export` and `serve` print from it reads as `:eval` printed it (a length of 0.945 said 0.94)."""
    return dict(kept=scored.kept, agree=scored.agreement, length=whole["length"],
                unchanged=whole["unchanged"], answers=whole["answers"], probes=scored.questions,
                **({"scale": scale} if scale != 1.0 else {}))


# --- the base's answers, once per session ---------------------------------------------------------

def session_reference(session, questions, options: locality.LocalityOptions = locality.DEFAULTS,
                      on_batch=None) -> locality.Reference:
    """The base's answers to `questions`, computed once per session with every adapter off (the
    active one is restored) and cached in session.extensions; a changed instruction or
    max_new_tokens makes other questions, so another entry. `on_batch` as for locality.reference."""
    cache = session.extensions.setdefault("locality", {})
    key = (tuple(questions), options.max_new_tokens)
    if key in cache:
        cache[key] = cache.pop(key)  # most recently used last
        return cache[key]
    stored = _stored(session, questions, options)
    ref = _read(stored, session.tokenizer, questions) if stored is not None else None
    if ref is None:
        previous = session.active_adapter
        live.activate(session, None)
        try:
            ref = locality.reference(session.model, session.tokenizer, questions, options, on_batch)
        finally:
            live.activate(session, previous)
        if stored is not None:
            _write(stored, ref)
    cache[key] = ref
    while len(cache) > CACHE_SIZE:
        cache.pop(next(iter(cache)))
    return ref


def _stored(session, questions, options):
    """Where the base's answers to `questions` are kept on disk (base_cache.py), or None."""
    return base_cache.path(session, "base-answers", [BASE_ANSWERS_VERSION, options.max_new_tokens,
                                                    [list(q) for q in questions]], ".json")


def _read(path, tokenizer, questions):
    """The Reference kept at `path`, or None (not there, unreadable, or its prompts are not what the
    tokenizer makes of `questions` now: then it is made again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ref = locality.Reference(tuple(map(tuple, data["prompts"])), tuple(map(tuple, data["answers"])),
                                 tuple(map(tuple, data["predicted"])))   # a file from before `predicted`: made again
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now = tuple(tuple(prompts.prompt_ids(tokenizer, i, q)) for i, q in questions)
    fits = ref.prompts == now and len(ref.answers) == len(now) == len(ref.predicted)
    return ref if fits and all(len(a) == len(p) for a, p in zip(ref.answers, ref.predicted)) else None


def _write(path, ref) -> None:
    base_cache.write(path, durable.json_bytes({"prompts": ref.prompts, "answers": ref.answers, "predicted": ref.predicted}))


def probe_questions(session, extra=(), questions=None) -> list[tuple[str, str]]:
    """The built-in probes (or `questions`) under the session's instruction, then `extra`
    (instruction, question) pairs, duplicates dropped."""
    questions = locality.builtin(locality.PROBES) if questions is None else questions
    pairs = [(session.instruction, q) for q in questions] + list(extra)
    return list(dict.fromkeys((i.strip(), q.strip()) for i, q in pairs))
