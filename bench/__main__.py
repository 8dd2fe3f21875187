"""python -m bench [--quick] [--device cpu|cuda] [--json PATH]: every figure against its baseline, one run.

Prints the figures and the targets as a markdown table, writes everything (figures at the top
level, plus machine, mode, targets, missing) as JSON. A figure whose lorachat API is not there is
null and listed under `missing`. Knows nothing about how each figure is measured (bench/*.py).
"""
import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# smol_train (the headline on real weights) early, the long random-weight train suite last: a run cut short
# still leaves the other figures in the JSON (written after each suite)
SUITES = ("startup", "smol", "smol_train", "bf16", "smol_locality", "gguf", "recall", "dataset", "ddp", "decode", "switch", "locality",
          "opt27", "train")


@dataclass(frozen=True)
class Mode:
    name: str
    steps: int            # optimizer steps, the same for the seed recipe and lorachat
    decode_tokens: int
    decode_rounds: int    # decode runs per side (one base and one adapter run a round)
    switches: int         # back-and-forth :use pairs per switch figure
    loaded: int           # adapters in memory for use_switch_ms_p50_50
    dataset_steps: int = 40          # :train steps on the generated 1,000-row dataset
    dataset_rows: int = 1000
    sweep: tuple = ()     # the seed recipe's lrs besides its own (the best one is the second baseline)
    seed_cap: int = 0     # steps of the seed's run checking recall (0: skipped)
    check_every: int = 10
    teach: bool = False   # lorachat's :train until recall on the train suite's model
    recall_steps: int | None = None  # cap of every :train until recall run (smoke only)
    smol_cap: int = 0     # smol_train: the seed's steps per lr of `sweep` to 10/10 on smol (0: the two facts only)
    first_cap: int = 40   # smol_train: the seed's steps to 2/2 on its two facts
    ddp: bool = True      # the ddp suite (two torchrun launches)
    shape: str | None = None         # model shape override (smoke only)


MODES = {
    "full": Mode("full", steps=100, decode_tokens=64, decode_rounds=12, switches=25, loaded=50,
                 sweep=(1e-4, 2e-4, 5e-4, 1e-3, 5e-3), seed_cap=400, teach=True, smol_cap=400),
    # under 3 minutes with smol_train's two facts: 300 generated rows instead of 1,000, no ddp
    "quick": Mode("quick", steps=3, decode_tokens=32, decode_rounds=4, switches=10, loaded=50, dataset_steps=10,
                  dataset_rows=300, ddp=False),
    # the smoke test: every code path, nothing worth reading
    "smoke": Mode("smoke", steps=1, decode_tokens=4, decode_rounds=1, switches=2, loaded=4, dataset_steps=1, dataset_rows=40,
                  sweep=(5e-3,), seed_cap=2, check_every=1, teach=True, recall_steps=1, shape="tiny", smol_cap=2, first_cap=2),
}
SHAPE = {"cpu": "opt-125m", "cuda": "opt-2.7b"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (about 3 minutes on 2 cores)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--only", help=f"comma list of suites to run (default all: {','.join(SUITES)})")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    only = args.only.split(",") if args.only else list(SUITES)
    if unknown := sorted(set(only) - set(SUITES)):
        parser().error(f"unknown suite(s) {', '.join(unknown)} (have: {', '.join(SUITES)})")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA GPU is visible to torch here (run the CPU suite with --device cpu)", file=sys.stderr)
        return 2
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    results = run(mode, args.device, only, args.json)
    from bench.kit.goals import markdown

    print(markdown(results["targets"]))
    print(json.dumps({k: v for k, v in results.items() if k not in ("targets", "machine")}, default=str))
    return 0


def run(mode: Mode, device: str, only, json_path: Path | None = None) -> dict:
    from bench.kit import goals, machine

    start = time.perf_counter()
    figures, missing, skipped = {}, {}, {}
    about = machine.describe(device)

    def results():
        return dict(figures, mode=mode.name, total_s=round(time.perf_counter() - start, 1), missing=missing,
                    skipped=skipped, machine=about, targets=goals.check(figures, skipped))

    with tempfile.TemporaryDirectory(prefix="lorachat-bench-") as home:
        for name, measure in _suites(mode, device, Path(home), only, start):
            _log(start, f"{name} ...")
            try:
                new = measure()
            except _missing() as exc:
                missing[name] = str(exc)
                _log(start, f"{name} missing: {exc}")
                continue
            if isinstance(new, tuple):  # (figures, {figure: why this mode skips it})
                new, skips = new
                skipped.update(skips)
            figures.update(new)
            _log(start, f"{name} done {json.dumps(new, default=str)}")
            _write(json_path, results())
    final = results()
    _write(json_path, final)
    return final


def _write(path: Path | None, results: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")


def _suites(mode: Mode, device: str, home: Path, only, start: float):
    """(name, zero-argument measure) in run order; decode and switch share one session."""
    import torch

    from bench.kit import pairs, seeding, shapes
    from bench.kit.workspace import trained_session
    from bench.suites import (
        bf16,
        dataset,
        ddp,
        decode,
        gguf,
        locality,
        opt27,
        recall,
        smol,
        smol_locality,
        smol_train,
        startup,
        switch,
    )
    from bench.suites import train as train_suite

    shape = mode.shape or SHAPE[device]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    state = {}

    def train():
        state.clear()  # the decode/switch session's model and adapters: not needed any more
        seeding.free(device)
        base = shapes.build(shape, device, dtype)
        out, skips = train_suite.figures(base, shapes.tokenizer(), pairs.examples(), mode, device, home / "train",
                                        log=lambda text: _log(start, text))
        return dict(out, model_shape=shape, model_parameters=shapes.parameters(base)), skips

    def session():
        if "session" not in state:
            state["session"] = trained_session(shapes.build(shape, device, dtype), shapes.tokenizer(),
                                               pairs.examples(), "bench", device, home / "adapters")
        return state["session"]

    suites = {
        "startup": lambda: startup.figures(device, home / "startup", 1 if mode.name != "full" else 3),
        "smol": lambda: smol.figures(device, home / "smol", 1 if mode.name != "full" else 3, mode.decode_tokens,
                                     mode.decode_rounds),
        "smol_train": lambda: smol_train.figures(device, home / "smol_train", mode, log=lambda text: _log(start, text)),
        "bf16": lambda: bf16.figures(device, mode, home / "bf16", log=lambda text: _log(start, text)),
        "opt27": lambda: opt27.figures(device, mode, home / "opt27", log=lambda text: _log(start, text)),
        "smol_locality": lambda: smol_locality.figures(mode, log=lambda text: _log(start, text)),
        "gguf": lambda: gguf.figures(log=lambda text: _log(start, text)),
        "train": train,
        "decode": lambda: decode.figures(session(), "bench", mode.decode_tokens, mode.decode_rounds),
        "switch": lambda: switch.figures(session(), "bench", mode.loaded, mode.switches),
        "recall": lambda: recall.figures(device, home / "recall", mode.recall_steps),
        "dataset": lambda: dataset.figures(device, mode.dataset_steps, mode.dataset_rows),
        "ddp": lambda: ddp.figures(device, home / "ddp", mode.name) if mode.ddp else
        ({}, {"ddp_token_speedup": "not in this mode (--quick stays under 3 minutes)"}),
        "locality": lambda: locality.figures(mode.steps, None if mode.name == "full" else 32, device,
                                              log=lambda text: _log(start, text)),
    }
    return [(name, suites[name]) for name in SUITES if name in only]


def _missing():
    from bench.kit.workspace import Missing

    return Missing


def _log(start: float, text: str) -> None:
    print(f"[bench {time.perf_counter() - start:7.1f}s] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
