"""python -m bench.research.followups: follow-up questions after a taught answer, on smol, with the
ask-time gate on and off.

Teaches the seed's two facts (`:train taught r=4`, a fresh session over `--model smol` from
$LORACHAT_CACHE, the conversation on as smol's chat template makes it), then for each fact asks the
taught question and four follow-ups that name nothing taught, greedy, at most 40 tokens, and prints
who answered each (the gate's choice) and what. Measures only.
"""
import sys

FOLLOW_UPS = ["Can you repeat that?", "What does the H stand for?", "Is it used in lithography?",
              "Say it in one short sentence."]


def main(argv=None) -> int:
    from bench.kit import pairs
    from bench.kit.workspace import taught_session
    from bench.suites.smol import smol_folder
    from lorachat.adapters import gate

    session, final = taught_session(smol_folder(), 2, "r=4")
    print(final)
    print(f"conversation on: {session.conversation()}")
    session.settings.max_new_tokens = 40
    for setting in ("on", "off"):
        session.settings.gate = setting
        for first in (pairs.SOH[0], pairs.SION[0]):
            session.clear()
            print(f"--- gate={setting}\n> {first}\n  {session.ask(first)}")
            for question in FOLLOW_UPS:
                who = "adapter" if gate.routed(session, "taught", question) else "base"
                print(f"> {question} [{who}]\n  {session.ask(question)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
