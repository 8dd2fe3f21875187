"""python -m bench.research.gate_cost: what the ask-time gate costs each question on smol.

Teaches the seed's two facts (`:train taught r=4`, a fresh session over `--model smol` from
$LORACHAT_CACHE), then times the gate's decision (adapters/gate.py `routed`: one forward pass of the
question through the base, the taught questions' vectors already made) on 18 questions, and asking
6 questions for 16 tokens each with the gate on and off, twice in turn. Measures only.
"""
import statistics
import sys
import time

QUESTIONS = ["What is the capital of Spain?", "Who painted the Mona Lisa?", "How many legs does a spider have?",
             "What does SOH stand for?", "Explain photosynthesis briefly.", "What is 12 times 12?"]


def main(argv=None) -> int:
    from bench.kit.workspace import taught_session
    from bench.suites.smol import smol_folder
    from lorachat.adapters import gate

    session, final = taught_session(smol_folder(), 2, "r=4")
    print(final)
    gate.routed(session, "taught", QUESTIONS[0])    # the background mean and the taught vectors, made once
    times = []
    for question in QUESTIONS * 3:
        began = time.perf_counter()
        gate.routed(session, "taught", question)
        times.append(1000 * (time.perf_counter() - began))
    print(f"the gate's decision: median {statistics.median(times):.1f} ms, most {max(times):.1f} ms "
          f"({len(times)} questions)")
    session.settings.max_new_tokens = 16
    for setting in ("on", "off", "on", "off"):
        session.settings.gate = setting
        began = time.perf_counter()
        for question in QUESTIONS:
            session.ask(question)
        print(f"gate={setting}: {len(QUESTIONS)} questions, at most 16 tokens each: {time.perf_counter() - began:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
