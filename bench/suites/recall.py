"""recall_seconds: the tiny model, `:train` with its defaults on 10 question/answer pairs, until 10/10.

Timed around the `:train` command itself (adapter creation, training with its recall checks,
saving), in a fresh session. Knows nothing about the other figures.
"""
from bench.kit import pairs
from bench.kit.teaching import timed_train
from bench.kit.workspace import session_for


def figures(device: str, home, steps: int | None = None) -> dict:
    """`steps` caps training (the smoke test only): a capped run need not reach 10/10."""
    from lorachat.models.loader import load_model

    seconds, steps, known, total = timed_train(session_for(load_model("tiny", device), home), "recall",
                                               pairs.examples(), steps)
    return dict(recall_seconds=round(seconds, 3) if known == total else None,
                recall_train_s=round(seconds, 3), recall_steps=steps, recall=f"{known}/{total}")
