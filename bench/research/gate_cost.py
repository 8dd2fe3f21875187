"""python -m bench.research.gate_cost: what the ask-time gate's decision costs a question on smol,
against a 32-token answer's time measured beside it.

Teaches the tune set's ten facts (bench/research/routing_sets.py, `:train taught`, a fresh session
over `--model smol` from $LORACHAT_CACHE), then, question by question and in turn, times the
gate's decision (adapters/gate.py `decide`) and the base answering the same question for exactly 32
tokens, for: unrelated questions (built-in probes), and paraphrases and look-alikes (which the
shortlist passes to the check). The first check of a taught answer also reads it after its own
question and after NULL (once per loaded adapter): timed apart. Measures only.
`python -m bench.research.gate_cost [THREADS [DTYPE]]` (defaults 2, float32; `auto` is lorachat's
default: bf16 where the CPU has it natively).
"""
import statistics
import sys
import time


def main(argv=None) -> int:
    import tempfile

    import torch

    from bench.kit.workspace import command, session_for
    from bench.research import routing_sets
    from bench.suites.smol import smol_folder
    from lorachat.adapters import gate, live
    from lorachat.core.prompts import DEFAULT_INSTRUCTION, Example
    from lorachat.lessons import jsonl
    from lorachat.models.loader import load_model
    from lorachat.scoring import locality

    argv = list(argv or [])
    torch.set_num_threads(int(argv[0]) if argv else 2)
    dtype = argv[1] if len(argv) > 1 else "float32"   # "auto": bf16 where the CPU has it natively (the default)
    session = session_for(load_model(str(smol_folder()), device="cpu", dtype=dtype), tempfile.mkdtemp())
    print(f"dtype {dtype}: {session.model.dtype}, {torch.get_num_threads()} thread(s)")
    session.settings.context = "off"
    jsonl.append_examples(session.home, "taught", [Example(DEFAULT_INSTRUCTION, q, a) for q, a, *_ in routing_sets.TUNE])
    session.dataset = "taught"
    print(command(session, ":train taught probes=0").strip().splitlines()[0])
    groups = {"unrelated (probes)": locality.builtin(locality.PROBES)[:24],
              "paraphrases": [q for q, _, _ in routing_sets.paraphrases("tune")][::2],
              "look-alikes": [q for q, _ in routing_sets.lookalikes("tune")][::2]}
    primers = [q for q, _, _ in routing_sets.paraphrases("tune")][1::4]   # one per fact, not measured below
    began = time.perf_counter()
    gate.decide(session, "taught", primers[0])
    print(f"the first decision (the background, the taught questions' readings, a first check): "
          f"{1000 * (time.perf_counter() - began):.0f} ms")
    for q in primers[1:]:   # each taught answer's own rows, made at its first check
        gate.decide(session, "taught", q)
    ids = {}
    for name, questions in groups.items():
        ratios, decisions, answers, checked = [], [], [], 0
        for q in questions:
            began = time.perf_counter()
            decision = gate.decide(session, "taught", q)
            decided = time.perf_counter() - began
            checked += decision.share is not None
            prompt = torch.tensor([ids.setdefault(q, session.prompt(q))])
            with live.switch(session).disabled(), torch.no_grad():
                began = time.perf_counter()
                session.model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                       pad_token_id=session.tokenizer.pad_token_id)
                answered = time.perf_counter() - began
            decisions.append(1000 * decided)
            answers.append(1000 * answered)
            ratios.append(decided / answered)
        print(f"{name}: {len(questions)} questions, {checked} checked; decision median {statistics.median(decisions):.0f} ms, "
              f"32-token answer median {statistics.median(answers):.0f} ms; decision / answer median "
              f"{100 * statistics.median(ratios):.1f}%, most {100 * max(ratios):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
