"""recall_seconds: the tiny model, `:train` with its defaults on 10 question/answer pairs, until 10/10.

Timed around the `:train` command itself (adapter creation, training with its recall checks,
saving), in a fresh session. Knows nothing about the other figures.
"""
import re
import time

from bench import shapes
from bench.workspace import command, session_for

DONE = re.compile(r"trained \S+: (\d+) steps?, loss \S+, recall (\d+)/(\d+)")


def figures(device: str, home, steps: int | None = None) -> dict:
    """`steps` caps training (the smoke test only): a capped run need not reach 10/10."""
    from lorachat import datasets
    from lorachat.models import load_model

    loaded = load_model("tiny", device)
    session = session_for(loaded, home)
    datasets.append_examples(session.home, "recall", shapes.examples())
    session.dataset = "recall"
    line = ":train recall" + (f" steps={steps}" if steps else "")
    start = time.perf_counter()
    printed = command(session, line)
    seconds = time.perf_counter() - start
    done = DONE.search(printed)
    if done is None:
        raise RuntimeError(f"{line!r} printed no 'trained ...' line: {printed[-300:]!r}")
    known, total = int(done.group(2)), int(done.group(3))
    return dict(recall_seconds=round(seconds, 3) if known == total else None,
                recall_train_s=round(seconds, 3), recall_steps=int(done.group(1)), recall=f"{known}/{total}")
