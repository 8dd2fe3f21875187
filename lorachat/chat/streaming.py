"""Streaming answers: a generator of text pieces from `model.generate`.

Knows nothing about adapters, sessions or terminals: the caller decides how pieces are shown,
and closing the generator (Ctrl-C in the caller) stops generation at the next token.
"""
import queue
import threading

from lorachat.core.prompts import STOP_MARKER


def stream(model, tokenizer, input_ids: list[int], **generation):
    """Yield the answer's text piece by piece: leading/trailing space and a following
    `Instruction:` block held back, so the pieces join to exactly `prompts.clean_answer(...)`."""
    import torch
    from transformers import (
        StoppingCriteria,
        StoppingCriteriaList,
        TextIteratorStreamer,
    )

    stop = threading.Event()

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return stop.is_set()

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=0.1)
    ids = torch.tensor([input_ids], device=model.device)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                  stopping_criteria=StoppingCriteriaList([_Stop()]),
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **generation)
    failure = []

    def work():
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as exc:  # surfaced in the caller's thread
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield from _trim(_pieces(streamer, thread), stop)
    finally:
        stop.set()
        thread.join()
    if failure:
        raise failure[0]


def _pieces(streamer, thread):
    while True:
        try:
            piece = next(streamer)
        except StopIteration:
            return
        except queue.Empty:
            if not thread.is_alive() and streamer.text_queue.empty():
                return
            continue
        if piece:
            yield piece


def _trim(pieces, stop: threading.Event):
    """Emit text while holding back whatever might still turn out to be trailing space or the
    start of STOP_MARKER; stop at the marker. The pieces join to exactly prompts.clean_answer of
    the whole text (which is also what a server's stop string and a strip give)."""
    pending, shown = "", False
    for piece in pieces:
        pending += piece
        if STOP_MARKER in pending:
            head = pending.split(STOP_MARKER, 1)[0].rstrip()
            head = head if shown else head.lstrip()
            if head:
                yield head
            stop.set()
            return
        keep = _held_back(pending)
        out, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
        out = out if shown else out.lstrip()
        if out:
            shown = True
            yield out
    tail = pending.rstrip() if shown else pending.strip()
    if tail:
        yield tail


def _held_back(text: str) -> int:
    """How many trailing characters could still be trailing space or a partial STOP_MARKER."""
    marker = next((size for size in range(min(len(text), len(STOP_MARKER) - 1), 0, -1)
                   if STOP_MARKER.startswith(text[-size:])), 0)
    tail = text[:len(text) - marker]
    return marker + len(tail) - len(tail.rstrip())
