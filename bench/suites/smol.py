"""smol_*: the real model built in, SmolLM2-135M-Instruct (`--model smol`), as a user meets it.

- smol_startup_s: a fresh `python -m lorachat --model smol` process from its start to its first
  prompt, the model in the cache (its one-time fetch and conversion is not part of the figure), beside
  smol_import_floor_s, a process that only imports torch and transformers' model classes: what no
  start can avoid;
- smol_decode_tok_s / smol_generate_tok_s / smol_decode_ratio: greedy tokens per second through
  lorachat's streaming answer (what the REPL shows) against plain transformers `generate` on the same
  model and prompt; alternating, the fastest run of each counts (as the decode suite);
- smol_rss_mb: the resident memory of that fresh process with smol loaded (`:info`).
Knows nothing about training.
"""
import re
import statistics
import subprocess
import sys
import time

from bench.kit import pairs
from bench.suites.startup import first_prompt

IMPORTS = "import torch, transformers; from transformers import AutoModelForCausalLM, AutoTokenizer"


def figures(device: str, home, repeats: int, tokens: int, rounds: int) -> dict:
    folder = smol_folder()
    floor = statistics.median(_process([sys.executable, "-c", IMPORTS]) for _ in range(repeats))
    starts, rss = [], None
    for _ in range(repeats):
        seconds, out = first_prompt(["--model", "smol", "--device", device, "--home", str(home)], [":info", ":quit"],
                                    HF_HUB_OFFLINE="1")
        starts.append(seconds)
        rss = _resident(out)
    return dict(smol_import_floor_s=round(floor, 3), smol_startup_s=round(statistics.median(starts), 3),
                smol_rss_mb=rss, **_decode(folder, device, tokens, rounds))


def smol_folder():
    """smol's converted folder in the cache, made first (fetch and conversion, once) where it is not there."""
    from lorachat.models import converted

    return converted.ensure_smol(progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True))


def _process(argv) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def _resident(info: str) -> float | None:
    found = re.search(r"memory\s+([\d,]+) MB resident", info)
    return float(found.group(1).replace(",", "")) if found else None


def _decode(folder, device: str, tokens: int, rounds: int) -> dict:
    from lorachat.models.loader import load_model

    loaded = load_model(str(folder), device)
    ours, theirs = race(loaded.model, loaded.tokenizer, tokens, rounds)
    return dict(smol_decode_tokens=tokens, smol_decode_tok_s=round(ours, 2), smol_generate_tok_s=round(theirs, 2),
                smol_decode_ratio=round(ours / theirs, 4))


def race(model, tokenizer, tokens: int, rounds: int) -> tuple[float, float]:
    """Greedy tokens per second (lorachat's streamed answer, plain `generate`) on one prompt, `tokens`
    each, alternating for `rounds` rounds (who goes first alternates too); the fastest run of each, after a warm-up pass."""
    import torch

    from lorachat.chat.streaming import answer
    from lorachat.core.prompts import prompt_ids

    ids = prompt_ids(tokenizer, pairs.INSTRUCTION, "Tell me about the history of Paris.")
    fixed = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    def streamed() -> float:
        start = time.perf_counter()
        answer(model, tokenizer, ids, lambda piece: None, **fixed)
        return time.perf_counter() - start

    def plain() -> float:
        tensor = torch.tensor([ids], device=model.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **fixed)
        assert out.shape[1] == tensor.shape[1] + tokens
        return time.perf_counter() - start

    with torch.inference_mode():   # a first pass reads the weights in (a lazily mapped file): timed by neither side
        model.generate(input_ids=torch.tensor([ids], device=model.device), max_new_tokens=2, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
    best = {"lorachat": float("inf"), "generate": float("inf")}
    for round_ in range(rounds):
        for name, run in (("lorachat", streamed), ("generate", plain))[::1 if round_ % 2 == 0 else -1]:
            best[name] = min(best[name], run())
    return tokens / best["lorachat"], tokens / best["generate"]
