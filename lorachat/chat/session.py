"""Session: the one owner of mutable state (model, tokenizer, settings, dataset, adapters, last turn).

It knows nothing about terminals: output goes through `self.ui`, input for interactive prompts
through `self.read_text` (None in scripts).
"""
from dataclasses import dataclass, field
from pathlib import Path

from lorachat.chat.streaming import stream
from lorachat.core import prompts
from lorachat.core.errors import LorachatError
from lorachat.core.prompts import DEFAULT_INSTRUCTION, MAX_NEW_TOKENS

DEFAULT_DATASET = "default"


@dataclass
class Settings:
    """Generation settings and session limits, shown and changed by `:set`."""
    max_new_tokens: int = field(default=MAX_NEW_TOKENS, metadata={"help": "longest answer, in tokens", "min": 1, "max": 8192})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature", "positive": True, "max": 100})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass", "positive": True, "max": 1})
    repetition_penalty: float = field(default=1.0, metadata={"help": "1.0 is none", "positive": True, "max": 100})
    seed: int = field(default=0, metadata={"help": "seed set before each sampled answer", "min": 0, "max": 2**32 - 1})
    max_loaded: int = field(default=8, metadata={"help": "adapters kept in memory (least recently used unloaded)", "min": 1, "max": 1000})

    def generation_kwargs(self) -> dict:
        kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                      repetition_penalty=self.repetition_penalty)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


class Session:
    def __init__(self, loaded, home: Path, ui, *, force: bool = False, allow_pickle: bool = False):
        self.loaded = loaded              # models.LoadedModel: the base model, loaded once
        self.model = loaded.model         # what answers: the base, or a PEFT wrapper around it
        self.tokenizer = loaded.tokenizer
        self.home = Path(home)
        self.ui = ui
        self.read_text = None             # callable(label) -> str on a terminal; None in scripts
        self.settings = Settings()
        self.instruction = DEFAULT_INSTRUCTION
        self.dataset = DEFAULT_DATASET
        self.last_question: str | None = None
        self.last_answer: str | None = None
        self.last_answer_complete = False  # False when the last answer was stopped (Ctrl-C) midway
        self.force = force
        self.allow_pickle = allow_pickle
        self.active_adapter: str | None = None   # None: the base model answers
        self.extensions: dict = {}               # per-feature state owned by command modules
        self.headless = False                    # `lorachat train`: no later commands, SIGTERM stops training too

    def ask(self, question: str):
        """Stream the answer's pieces; the turn is remembered (for :good / :fix) when it ends."""
        import torch

        if self.settings.do_sample:
            torch.manual_seed(self.settings.seed)
        ids = prompts.prompt_ids(self.tokenizer, self.instruction, question)
        generation = self.settings.generation_kwargs()
        room = self.context_length() - len(ids)
        if room < 1:
            raise LorachatError(f"the question is too long: {len(ids)} tokens with the prompt, "
                                f"the model reads at most {self.context_length()}")
        generation["max_new_tokens"] = min(generation["max_new_tokens"], room)
        self.last_question, self.last_answer, self.last_answer_complete = question, "", False
        for piece in stream(self.model, self.tokenizer, ids, **generation):
            self.last_answer += piece
            yield piece
        self.last_answer_complete = True

    def context_length(self) -> int:
        """Most tokens (prompt and answer) the model can attend to."""
        from lorachat.models.loader import positions

        return positions(self.loaded.model) or min(self.tokenizer.model_max_length, 1 << 20)

    def asking(self):
        """What asking does with a question now: what recall checks answers against."""
        from lorachat.scoring.recall import Asking

        return Asking(self.instruction, self.settings.max_new_tokens, self.settings.repetition_penalty,
                      self.context_length())

    def prompt_label(self) -> str:
        return f"{self.active_adapter or 'base'} · {self.dataset}"
