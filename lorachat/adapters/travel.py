"""What travels with an adapter that leaves lorachat (`:export` as a folder or GGUF, `lorachat serve`):
its weights, not the ask-time gate (adapters/gate.py), which decides inside lorachat which questions
the adapter answers. Outside, the adapter answers every question, so the one line said on the way
out carries the adapter's ungated figures where they were measured: lorachat.json's "ungated"
record, `{"kept": 0.317, "agree": 0.914, "length": 1.01, "unchanged": 0.094, "answers": 32, "probes":
303}` (kept: the share of probe questions whose first tokens are the base's; agree: the share of the
base's answer tokens kept; length: the median answer length over the base's; unchanged: the share of
`answers` whole answers that are the base's to the last token; any may be missing; "scale": the live
`:scale` they were measured at, when not 1). Figures measured at another scale than the adapter leaves
at are not said as its own. Knows nothing about how they are measured (`:eval NAME gate=off` writes
them) or about terminals.
"""
import math


def gate_line(name: str, meta: dict | None, scale: float = 1.0) -> str:
    """The one line: the gate stays in lorachat, and the ungated figures or how to measure them
    (`scale`: the strength the adapter leaves at, the live `:scale` of an export; served: 1)."""
    said = f"the ask-time gate stays in lorachat: outside it '{name}' answers every question"
    record = _at_scale(meta or {}, scale)
    figures = described(record)
    trained = (meta or {}).get("train")
    hint = ("; trained for the gate: `:train null_space=0.05` (a few facts) or `travel=on` teaches one meant to travel "
            "(docs/training.md says which)") \
        if isinstance(trained, dict) and not (trained.get("travel") or trained.get("null_space")) else ""
    measured = _number(record.get("scale", 1.0)) if isinstance(record, dict) else None
    if figures and measured != scale:
        at = f"at scale {measured:g}" if measured is not None else "at an unknown scale"
        return f"{said} (ungated figures not measured at scale {scale:g}, the one it leaves at: :eval {name} gate=off; " \
               f"lorachat.json's are {at}){hint}"
    if not figures:
        return f"{said} (ungated figures not measured: :eval {name} gate=off){hint}"
    return f"{said} (ungated: {', '.join(figures)}){hint}"


def recorded(meta: dict | None, record: dict) -> dict:
    """The lorachat.json fields that keep `record`, measured at its "scale": `ungated` at scale 1
    (what :train and `lorachat serve` speak of), else `ungated_scaled` by scale beside it, so a look
    at a scaled-down delta never replaces the as-trained figures."""
    scale = _number(record.get("scale", 1.0))
    if scale is None or scale == 1.0:
        return {"ungated": record}
    scaled = (meta or {}).get("ungated_scaled")
    return {"ungated_scaled": dict(scaled if isinstance(scaled, dict) else {}, **{f"{scale:g}": record})}


def _at_scale(meta: dict, scale: float):
    """The ungated record measured at `scale` where lorachat.json has one, else `ungated`."""
    scaled = meta.get("ungated_scaled")
    if scale != 1.0 and isinstance(scaled, dict) and isinstance(scaled.get(f"{scale:g}"), dict):
        return scaled[f"{scale:g}"]
    return meta.get("ungated")


SHORTER = 0.9   # travel=on's answers below this share of the base's length: null_space keeps it with few facts


def shorter(train: dict, record) -> str | None:
    """What to try when a travel=on adapter (lorachat.json's `train` keys) answers shorter than the
    base without the gate: with a couple of facts its rehearsal gets too few steps to keep the length,
    which null_space keeps by construction (bench/RESULTS.md, "A scaled-down delta, and a user's two
    facts": 0.48-0.78x against 1.04-1.16x). None when there is nothing to say."""
    length = _number(record.get("length")) if isinstance(record, dict) else None
    if not train.get("travel") or train.get("null_space") or length is None or length >= SHORTER:
        return None
    return (f"its answers are {length:.2f}× the base's length without the gate: with few facts, travel=on's rehearsal gets "
            "few steps; `:train NAME null_space=0.05` keeps the base's length (docs/training.md, \"Keeping the rest of the model\")")


def described(record) -> list[str]:
    """The ungated figures of a lorachat.json `ungated` record, in words (none when it holds none)."""
    if not isinstance(record, dict):
        return []
    kept, agree, length, probes, unchanged, answers = (_number(record.get(key)) for key in
                                                       ("kept", "agree", "length", "probes", "unchanged", "answers"))
    out = []
    if kept is not None:
        of = f"{int(probes)} probes" if probes is not None and probes == int(probes) and probes > 0 else "the probes"
        out.append(f"kept {kept:.1%} of {of} exactly")
    if agree is not None:
        out.append(f"{agree:.1%} of the base's answer tokens")
    if length is not None:
        out.append(f"answers {length:.2f}× the base's length")
    if unchanged is not None:
        of = f"{int(answers)} " if answers is not None and answers == int(answers) and answers > 0 else ""
        out.append(f"{unchanged:.1%} of {of}whole answers unchanged")
    return out


def _number(value) -> float | None:
    """A finite number, or None (a missing field, null, or anything else written there)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
