"""What the user tells the ask-time gate without training: a phrasing added for a taught answer
(`:add` or `:good` with that answer: it routes at once) and a question sent back to the base
(`:unroute`: a not key of the answer it reached, router.py), both written to the adapter's
lorachat.json; and what a new adapter trained while another was active keeps of the latter.
Knows nothing about terminals; adapters/gate.py holds the keys and decides.
"""
from lorachat.adapters import disk, gate
from lorachat.adapters.paths import adapter_path
from lorachat.adapters.provenance import read_meta
from lorachat.core.errors import LorachatError
from lorachat.core.prompts import asked
from lorachat.routing import router
from lorachat.routing.router import Key


def add_phrasing(session, name: str, example) -> bool:
    """Record `example`'s question as another phrasing of adapter `name`'s taught answer when that
    answer is `example`'s (same instruction): it routes at once, without training. False when the
    adapter was not taught that answer, or already has the question. Written to lorachat.json."""
    entry = gate.entry(session, name)
    if entry.keys is None or example.text is not None:
        return False
    instruction, question = asked(example)
    answer = example.output.strip()
    taught = [k for k in entry.keys.keys if k.answer == answer and k.instruction == instruction]
    if not taught or any(k.question == question for k in entry.keys.keys):
        return False
    meta = read_meta(adapter_path(session, name)) or {}
    if not isinstance(meta.get("keys"), list):
        return False   # not saved, or recorded before keys
    every = gate.not_records(meta.get("not_keys"))
    nots = [r for r in every if r["question"].strip() != question]
    back = [r for r in every if r["question"].strip() == question]   # :unroute's, restored if this is taken back
    keys = meta["keys"] + [dict(instruction=instruction, question=question, answer=answer, added=True,
                                **({"sent_back": back} if back else {}))]
    if not disk.record(session, name, {"keys": keys, "not_keys": nots}):
        return False
    entry.keys = gate.keys_from(keys, None, nots)
    return True


def remove_phrasing(session, name: str, example) -> bool | None:
    """Take back what add_phrasing(session, name, example) recorded (`:undo` of that example): the
    phrasing goes from lorachat.json and the gate, and a question it had taken from `:unroute` is sent
    back to the base again. None when it is not there (never added, or gone); else whether it was."""
    instruction, question = asked(example)
    return _remove(session, name, instruction, question, example.output.strip())


def _remove(session, name: str, instruction: str, question: str, answer: str) -> bool | None:
    meta = read_meta(adapter_path(session, name)) or {}
    keys = meta.get("keys")
    if not isinstance(keys, list):
        return None
    mine = lambda r: (isinstance(r, dict) and r.get("added") and r.get("question") == question  # noqa: E731
                      and r.get("instruction") == instruction and r.get("answer") == answer)
    left = [r for r in keys if not mine(r)]
    nots = gate.not_records(meta.get("not_keys"))
    back = [n for r in keys if mine(r) for n in gate.not_records(r.get("sent_back"))
            if not any(m["question"].strip() == n["question"].strip() for m in nots)]
    if len(left) == len(keys) or not disk.record(session, name, {"keys": left, **({"not_keys": nots + back} if back else {})}):
        return None
    gate.entry(session, name).keys = gate.keys_from(left, None, nots + back)
    return bool(back)


def unroute(session, name: str, question: str, decision: router.Decision) -> Key:
    """Send `question`, which adapter `name` answered by `decision`, back to the base from now on: a
    not key for the answer it reached, written to lorachat.json (router.py, "not keys"); a phrasing
    the user added (`:add`, `:fix`) is taken back instead, and the gate decides it as any question
    again. Returns the key it reached."""
    key = decision.key
    question = question.strip()
    if key.question == question and key.added:
        if _remove(session, name, key.instruction, key.question, key.answer) is None:
            raise LorachatError(f"'{name}' is not saved here with its lessons, so the phrasing cannot be taken back: "
                                f":save {name} first")
        return key
    if key.question == question:
        raise LorachatError(f"{question!r} is a question '{name}' was taught, and it always answers it: to stop that, "
                            f":drop its example and :train again")
    meta = read_meta(adapter_path(session, name)) or {}
    nots = [r for r in gate.not_records(meta.get("not_keys")) if r["question"].strip() != question] + \
        [dict(instruction=key.instruction, question=question, answer=key.answer)]
    if not isinstance(meta.get("keys"), list) or not disk.record(session, name, {"not_keys": nots}):
        raise LorachatError(f"'{name}' is not saved here with its lessons, so there is nowhere to keep this: "
                            f":save {name} first")
    gate.entry(session, name).keys = gate.keys_from(meta["keys"], None, nots)
    return key


def carried(session, name: str | None, keys: list[dict] | None) -> list[dict]:
    """The not keys of adapter `name` (:unroute's) for answers `keys` teach again and questions they do
    not teach: what a new adapter trained while `name` was active keeps of them."""
    held = gate.entry(session, name).keys if name is not None and keys else None
    taught = {(k["answer"], k["instruction"]) for k in keys or []}
    return [dict(instruction=n.instruction, question=n.question, answer=n.answer) for n in (held.nots if held else [])
            if (n.answer, n.instruction) in taught and n.question not in {k["question"] for k in keys}]
