"""python -m bench.research.followups: follow-up questions after a taught answer, on smol, with the
ask-time gate on and off.

Teaches the seed's two facts (`:train two r=4`, a fresh session over `--model smol` from
$LORACHAT_CACHE, the conversation on as smol's chat template makes it), then for each fact asks the
taught question and four follow-ups that name nothing taught, greedy, at most 40 tokens, and prints
who answered each (the gate's choice) and what. Measures only.
"""
import sys
import tempfile

FOLLOW_UPS = ["Can you repeat that?", "What does the H stand for?", "Is it used in lithography?",
              "Say it in one short sentence."]


def main(argv=None) -> int:
    from bench.kit import pairs
    from bench.kit.workspace import command, session_for
    from bench.suites.smol import smol_folder
    from lorachat.adapters import gate
    from lorachat.lessons import jsonl
    from lorachat.models.loader import load_model

    session = session_for(load_model(str(smol_folder()), device="cpu", dtype="float32"), tempfile.mkdtemp())
    jsonl.append_examples(session.home, "two", pairs.examples()[:2])
    session.dataset = "two"
    print(command(session, ":train two r=4").strip().splitlines()[0])
    print(f"conversation on: {session.conversation()}")
    session.settings.max_new_tokens = 40
    for setting in ("on", "off"):
        session.settings.gate = setting
        for first in (pairs.SOH[0], pairs.SION[0]):
            session.clear()
            print(f"--- gate={setting}\n> {first}\n  {session.ask(first)}")
            for question in FOLLOW_UPS:
                who = "adapter" if gate.routed(session, "two", question) else "base"
                print(f"> {question} [{who}]\n  {session.ask(question)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
