"""lorachat: a chat REPL that learns while you talk to it (LoRA via PEFT, in-process)."""

__version__ = "0.1.0"
