"""Taught answers in the middle of a conversation (issue 27), on the real model:

    python -m bench.research.conversation [--facts 10] [--model smol] ['KEYS' for :train, e.g. 'context=0']

Teaches the first N pairs of bench/kit/pairs.py with :train (its defaults and KEYS) through a session,
then asks each taught question as the 3rd turn, after two exchanges the training never saw, and
alone; prints one JSON line: verbatim counts, steps, seconds. Knows nothing about the other figures.
"""
import argparse
import io
import json
import tempfile
import time

from bench.kit.pairs import PAIRS

OPENERS = [("Hi! How are you today?", "What is the tallest mountain in the world?"),
           ("Can you recommend a good book?", "What is the boiling point of water?")]


def measure(model: str, facts: int, keys: str) -> dict:
    from lorachat.chat.repl import Repl
    from lorachat.chat.session import Session
    from lorachat.chat.ui import PlainUI
    from lorachat.models.loader import load_model

    out = io.StringIO()
    session = Session(load_model(model, device="cpu"), tempfile.mkdtemp(), PlainUI(out, progress_every=3600))

    def run(lines) -> str:
        start = len(out.getvalue())
        Repl(session).run_lines(lines)
        return out.getvalue()[start:]

    pairs = PAIRS[:facts]
    began = time.perf_counter()
    final = run([f":add {q} => {a}" for q, a in pairs] + [f":train taught {keys}"]).splitlines()[-1]
    seconds = time.perf_counter() - began
    run([":set context=on"])
    third, missed = 0, []
    for number, (question, answer) in enumerate(pairs):
        run([":clear", *OPENERS[number % len(OPENERS)]])
        got = run([question]).rstrip("\n").split("\n", 1)[1]
        third += got == answer
        if got != answer:
            missed.append(dict(question=question, got=got))
    run([":clear", ":set context=off"])
    alone = sum(run([q]).rstrip("\n").split("\n", 1)[1] == a for q, a in pairs)
    return dict(model=model, facts=facts, keys=keys, third_turn=third, alone=alone, missed=missed, final=final,
                wall_s=round(seconds, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.research.conversation", description=__doc__.splitlines()[0])
    p.add_argument("--facts", type=int, default=10)
    p.add_argument("--model", default="smol")
    p.add_argument("keys", nargs="*", help=":train keys")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.model, args.facts, " ".join(args.keys))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
