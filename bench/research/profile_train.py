"""python -m bench.research.profile_train [--dtype=D] [N] [KEYS]: where one `:train` on smol spends its time.

Loads `--model smol` (from $LORACHAT_CACHE, converting it once) in `--dtype D` (default auto, as a
user starts it), teaches the first N pairs of bench/kit/pairs.py (default 10) with `:train KEYS` in a
fresh session, and prints
- by phase: the whole command (Enter to the next prompt), the training loop, its optimizer steps
  (forward, backward and update of the examples, anchors and conversation copies), the base's
  log-probabilities for the KL anchors, the recall checks, the base's answers made (greedy, once per
  checkpoint: read from disk when kept), and the kept share on the probes;
- by operator: torch.profiler's CPU table over 6 steps of a second `:train` (until=steps).
Measures only; knows nothing of the benchmark's targets.
"""
import collections
import functools
import sys
import tempfile
import time


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dtype = "auto"
    if argv and argv[0].startswith("--dtype="):
        dtype, argv = argv[0].split("=", 1)[1], argv[1:]
    count, keys = (int(argv[0]) if argv else 10), " ".join(argv[1:])
    from torch.profiler import ProfilerActivity, profile

    from bench.kit import pairs
    from bench.kit.workspace import command, session_for
    from bench.suites.smol import smol_folder
    from lorachat.lessons import jsonl
    from lorachat.models.loader import load_model

    loaded = load_model(str(smol_folder()), device="cpu", dtype=dtype)
    print(f"smol in {str(loaded.dtype).replace('torch.', '')} ({loaded.why})")
    session = session_for(loaded, tempfile.mkdtemp(prefix="lorachat-profile-"))
    phases = _timed_phases()
    jsonl.append_examples(session.home, "facts", pairs.examples()[:count])
    session.dataset = "facts"
    start = time.perf_counter()
    final = command(session, f":train facts {keys}").strip().splitlines()[0]
    whole = time.perf_counter() - start
    print(f"{final}\n\nby phase ({count} pairs, :train {keys or '(defaults)'}):")
    print(f"  {'the whole command':28s} {whole:7.1f} s")
    for name, (seconds, calls) in sorted(phases.items(), key=lambda kv: -kv[1][0]):
        print(f"  {name:28s} {seconds:7.1f} s  {100 * seconds / whole:5.1f}%  x{calls}")
    jsonl.append_examples(session.home, "again", pairs.examples()[:count])
    session.dataset = "again"
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        command(session, f":train again steps=6 until=steps probes=0 {keys}")
    print("\nby operator (6 steps):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


def _timed_phases() -> dict:
    """Wrap the functions of each phase so their time and calls add up in the returned dict."""
    from lorachat.scoring import locality
    from lorachat.training import trainer

    totals = collections.defaultdict(lambda: [0.0, 0])
    for owner, attribute, name in ((trainer, "run", "training loop"), (trainer, "one_step", "optimizer steps"),
                                   (trainer._Loop, "_base_logprobs", "KL anchors: base log-probs"),
                                   (trainer._Loop, "_check", "recall checks"),
                                   (locality, "greedy", "base answers made (greedy)"),
                                   (locality, "score", "kept share on the probes")):
        setattr(owner, attribute, _timer(getattr(owner, attribute), totals[name]))
    return totals


def _timer(function, total: list):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - began
            total[1] += 1
    return timed


if __name__ == "__main__":
    sys.exit(main())
