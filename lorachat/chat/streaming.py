"""Streaming answers: `model.generate` in the calling thread, each piece of text handed to `show`
as it arrives.

Generation runs in the caller's own thread, not a helper thread: torch's CPU kernels run ~1.7x
slower in a thread that is not the one whose thread pool they warmed (measured on smol, 2 cores:
32 greedy tokens in 1.19 s here, 2.07 s from a helper thread), and Ctrl-C (KeyboardInterrupt, raised
in the main thread) stops generation at once. What is shown is trimmed as it goes: leading and
trailing space, and a following `Instruction:` block (which also stops generation), are held back,
so the pieces join to exactly `prompts.clean_answer(...)` of the whole text. Knows nothing about
adapters, sessions or terminals: the caller decides how a piece is shown.
"""
from lorachat.core.prompts import STOP_MARKER, stop_ids


def answer(model, tokenizer, input_ids: list[int], show=None, **generation) -> tuple[str, bool]:
    """Generate the answer to `input_ids`, calling `show(piece)` for each piece of it as it arrives:
    (the whole answer, cleaned; whether `max_new_tokens` cut it before it ended, no EOS and no stop
    marker). An exception raised by `show` (or Ctrl-C) stops generation."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

    trimmer = Trimmer(show or (lambda piece: None))

    class _Shown(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            trimmer.feed(text)

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return trimmer.stopped

    ids = torch.tensor([input_ids], device=model.device)
    stops = stop_ids(tokenizer, model)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             streamer=_Shown(tokenizer, skip_prompt=True, skip_special_tokens=True),
                             stopping_criteria=StoppingCriteriaList([_Stop()]),
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=stops or None, **generation)
    trimmer.finish()
    made = out[0, len(input_ids):].tolist()
    limit = generation.get("max_new_tokens")
    cut = (limit is not None and len(made) >= limit and not trimmer.stopped
           and made[-1] not in stops)
    return trimmer.text, cut


class Trimmer:
    """Text fed in pieces -> pieces shown: what might still turn out to be trailing space or the start
    of STOP_MARKER is held back, leading space dropped, and the text stops at the marker. The shown
    pieces join to exactly prompts.clean_answer of the whole text (which is also what a server's stop
    string and a strip give)."""

    def __init__(self, show):
        self.show, self.pending, self.text, self.stopped = show, "", "", False

    def feed(self, piece: str) -> None:
        if self.stopped or not piece:
            return
        self.pending += piece
        if STOP_MARKER in self.pending:
            self._emit(self.pending.split(STOP_MARKER, 1)[0].rstrip())
            self.pending, self.stopped = "", True
            return
        keep = _held_back(self.pending)
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        self._emit(out)

    def finish(self) -> None:
        """The text ended: what was held back as maybe-trailing is trailing."""
        if not self.stopped:
            self._emit(self.pending.rstrip())
            self.pending = ""

    def _emit(self, out: str) -> None:
        out = out if self.text else out.lstrip()
        if out:
            self.text += out
            self.show(out)


def _held_back(text: str) -> int:
    """How many trailing characters could still be trailing space or a partial STOP_MARKER."""
    marker = next((size for size in range(min(len(text), len(STOP_MARKER) - 1), 0, -1)
                   if STOP_MARKER.startswith(text[-size:])), 0)
    tail = text[:len(text) - marker]
    return marker + len(tail) - len(tail.rstrip())
