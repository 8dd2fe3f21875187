"""Session: the one owner of mutable state (model, tokenizer, settings, dataset, adapters, the conversation).

It knows nothing about terminals: output goes through `self.ui`, input for interactive prompts
through `self.read_text` (None in scripts).
"""
from dataclasses import dataclass, field
from pathlib import Path

from lorachat.adapters import gate
from lorachat.adapters.gate import GATE_AT
from lorachat.chat.streaming import answer
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
    context: str = field(default="auto", metadata={"help": "keep the conversation: ask each question after the earlier turns (auto: on for models with a chat template)", "choices": ("auto", "on", "off")})
    gate: str = field(default="auto", metadata={"help": "the active adapter answers only questions that ask what it was taught, the base the rest (auto: on from 50M parameters; :why shows a decision)", "choices": ("auto", "on", "off")})
    gate_at: float = field(default=GATE_AT, metadata={"help": "share of a taught answer's lift by its taught question (how much likelier the base finds the answer after it) a question must give it for the adapter to answer", "min": -1, "max": 2})

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
        self.last_answer_cut = 0           # max_new_tokens when that limit cut the last answer, else 0
        self.cleared = False               # :clear ended the conversation the last answer was given in
        self.last_turns_read = 0           # the conversation's turns the last question was asked after
        self.turns: list[tuple[str, str]] = []   # the conversation so far: (question, answer), oldest first
        self.force = force
        self.allow_pickle = allow_pickle
        self.active_adapter: str | None = None   # None: the base model answers
        self.extensions: dict = {}               # per-feature state owned by command modules
        self.headless = False                    # `lorachat train`: no later commands, SIGTERM stops training too

    def ask(self, question: str, show=None) -> str:
        """The answer to `question`, each piece handed to `show(piece)` as it arrives: asked after
        the conversation's turns (when it is on), the oldest dropped when they would not leave room
        for the answer. The turn is remembered: as the last question and answer (for :good / :fix;
        also when stopped midway) and, once the answer ends, as the conversation's newest turn."""
        import torch

        if self.settings.do_sample:
            torch.manual_seed(self.settings.seed)
        with gate.answering(self, question) as (asked, alone):   # the adapter is asked the taught question this one asks
            ids = self.prompt(asked, alone)
            generation = self.settings.generation_kwargs()
            room = self.context_length() - len(ids)
            if room < 1:
                raise LorachatError(f"the question is too long: {len(ids)} tokens with the prompt, "
                                    f"the model reads at most {self.context_length()}")
            generation["max_new_tokens"] = min(generation["max_new_tokens"], room)
            self.last_question, self.last_answer, self.last_answer_complete = question, "", False
            self.last_answer_cut, self.cleared = 0, False

            def shown(piece: str) -> None:
                self.last_answer += piece
                if show is not None:
                    show(piece)

            _, cut = answer(self.model, self.tokenizer, ids, shown, **generation)
        self.last_answer_complete = True
        self.last_answer_cut = generation["max_new_tokens"] if cut else 0
        if self.conversation():
            self.turns.append((question, self.last_answer))
        return self.last_answer

    def prompt(self, question: str, alone: bool = False) -> list[int]:
        """The token ids asking `question` now reads: after the conversation's turns that fit (when it
        is on and the question is not to be asked `alone`: a taught question the gate routed)."""
        history = self._fitting(question) if self.conversation() and not alone else []
        self.last_turns_read = len(history)
        return prompts.prompt_ids(self.tokenizer, self.instruction, question, history)

    def conversation(self) -> bool:
        """Whether questions are asked after the earlier turns (:set context; auto: where the model
        has a chat template, whose turns it was trained on)."""
        if self.settings.context == "auto":
            return prompts.uses_chat_template(self.tokenizer)
        return self.settings.context == "on"

    def _fitting(self, question: str) -> list[tuple[str, str]]:
        """The turns that fit before `question` with max_new_tokens to spare: the oldest are dropped
        for good, with one line saying so."""
        room, dropped = self.context_length() - self.settings.max_new_tokens, 0
        while self.turns and len(prompts.prompt_ids(self.tokenizer, self.instruction, question, self.turns)) > room:
            self.turns.pop(0)
            dropped += 1
        if dropped:
            self.ui.note(f"dropped {dropped} oldest turn{'s' if dropped != 1 else ''} to fit {self.context_length()} positions")
        return list(self.turns)

    def clear(self) -> None:
        """A new conversation: no earlier turns, nothing for :good / :fix to refer to (they say so)."""
        self.turns = []
        self.cleared = self.cleared or self.last_question is not None
        self.last_question, self.last_answer, self.last_answer_complete = None, None, False

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
        turn = f" · turn {len(self.turns) + 1}" if self.conversation() else ""
        return f"{self.active_adapter or 'base'} · {self.dataset}{turn}"
