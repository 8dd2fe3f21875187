"""decode_*: greedy decoding of a fixed number of tokens, base alone vs the active adapter.

Switching goes through `:use` (whatever lorachat does on activation, merging included, is part of
what a user gets). Runs alternate base/adapter, which goes first swapping every round, so contention
from other processes and warm-up hit both alike; the fastest run of each counts (the least disturbed
one). Batch-1 decoding is memory-bound and its speed wanders by ±5-10 % from run to run on a shared
host, so the full run takes 12 rounds. Knows nothing about training.
"""
import time

from bench.kit import pairs
from bench.kit.workspace import command


def figures(session, adapter: str, tokens: int, rounds: int) -> dict:
    import torch

    from lorachat.core.prompts import prompt_ids

    question = pairs.examples()[0].input
    ids = torch.tensor([prompt_ids(session.tokenizer, pairs.INSTRUCTION, question)], device=session.loaded.device)
    best = {"base": float("inf"), adapter: float("inf")}
    for round_ in range(rounds):
        for name in list(best)[::1 if round_ % 2 == 0 else -1]:
            command(session, f":use {name}")
            best[name] = min(best[name], _generate(session.model, ids, tokens))
    base, tuned = tokens / best["base"], tokens / best[adapter]
    return dict(decode_tokens=tokens, decode_base_tok_s=round(base, 2), decode_adapter_tok_s=round(tuned, 2),
                decode_ratio=round(tuned / base, 4))


def _generate(model, ids, tokens: int) -> float:
    import torch

    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                             min_new_tokens=tokens, do_sample=False, pad_token_id=1, eos_token_id=2)
    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + tokens
    return time.perf_counter() - start
