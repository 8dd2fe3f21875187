"""The formats of other people's instruction data: each maps a row (a dict of fields) to one or more
Examples, or skips the whole row with a reason (never half a row); and which format a set of fields
says. Knows nothing about files or the `datasets` library (importers.py reads the rows).
"""
from lorachat.core.errors import LorachatError
from lorachat.core.prompts import Example

FORMATS = ("auto", "alpaca", "prompt-completion", "messages", "sharegpt", "text", "piqa")
USER_ROLES = {"user", "human"}
ASSISTANT_ROLES = {"assistant", "gpt", "chatgpt", "bard", "bing", "model"}
SYSTEM_ROLES = {"system", "developer"}


class Skip(Exception):
    """A row that cannot be mapped; its message says why ('without an output')."""


def detect_format(columns: list[str]) -> str:
    """The format a set of field names says, checked from the most specific to the most general."""
    have = set(columns)
    checks = [("sharegpt", {"conversations"}), ("messages", {"messages"}), ("piqa", {"goal", "sol1", "sol2", "label"}),
              ("prompt-completion", {"prompt", "completion"}), ("alpaca", {"instruction", "output"}),
              ("alpaca", {"input", "output"}), ("text", {"text"})]
    for fmt, needed in checks:
        if needed <= have:
            return fmt
    shown = ", ".join(columns[:12]) or "none"
    raise LorachatError(f"cannot tell the format from the fields ({shown}); give format=alpaca|prompt-completion|messages|sharegpt|text|piqa")


def _text(row: dict, key: str, what: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise Skip(f"without {what}" if value is None else f"whose {key} is not text")
    if required and not value.strip():
        raise Skip(f"with an empty {key}")
    return value


def map_alpaca(row: dict, instruction: str) -> list[Example]:
    """instruction/input/output as they are; a row with no instruction field gets the session's;
    LLaMA-Factory's `history` ([question, answer] pairs before it) is kept."""
    output = _text(row, "output", "an output")
    given = _text(row, "instruction", "an instruction", required=False)
    question = _text(row, "input", "an input", required=False)
    if not given.strip() and not question.strip():
        raise Skip("without an instruction or input")
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(t, (list, tuple)) and len(t) == 2 and
                                                 all(isinstance(p, str) for p in t) for t in history):
        raise Skip("with a history that is not [question, answer] pairs")
    return [Example(given if row.get("instruction") is not None else instruction, question, output,
                    history=tuple((q, a) for q, a in history))]


def map_prompt_completion(row: dict, instruction: str) -> list[Example]:
    return [Example(instruction, _text(row, "prompt", "a prompt"), _text(row, "completion", "a completion"))]


def map_text(row: dict, instruction: str) -> list[Example]:
    return [Example(text=_text(row, "text", "a text"))]


def map_piqa(row: dict, instruction: str) -> list[Example]:
    """goal -> input; the labelled solution (sol1 for 0, sol2 for 1) -> output, as the notebook did."""
    label = row.get("label")
    if label not in (0, 1) or isinstance(label, bool):
        raise Skip("with a label other than 0 or 1")
    return [Example(instruction, _text(row, "goal", "a goal"), _text(row, f"sol{label + 1}", f"sol{label + 1}"))]


def map_messages(row: dict, instruction: str) -> list[Example]:
    """OpenAI-style `messages`: each assistant turn becomes an example, asked after the turns before it."""
    turns = row.get("messages")
    if not isinstance(turns, list):
        raise Skip("without a messages list")
    return _conversation([_turn(t, "role", "content") for t in turns], instruction)


def map_sharegpt(row: dict, instruction: str) -> list[Example]:
    """ShareGPT `conversations` with from/value (human/gpt/system), mapped like messages."""
    turns = row.get("conversations")
    if not isinstance(turns, list):
        raise Skip("without a conversations list")
    return _conversation([_turn(t, "from", "value") for t in turns], instruction)


def _turn(turn, role_key: str, text_key: str) -> tuple[str, str]:
    if not isinstance(turn, dict) or not isinstance(turn.get(role_key), str):
        raise Skip(f"with a turn that has no {role_key}")
    role = turn[role_key].lower()
    role = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else "system" if role in SYSTEM_ROLES else role
    if role not in ("user", "assistant", "system"):
        raise Skip(f"with a '{turn[role_key][:20]}' turn")
    text = turn.get(text_key)
    if not isinstance(text, str):
        raise Skip("with a turn that is not plain text")
    if not text.strip():
        raise Skip("with an empty turn")
    return role, text


def _conversation(turns: list[tuple[str, str]], instruction: str) -> list[Example]:
    """One example per assistant turn, its question the user turn before it, asked after the
    conversation's earlier (question, answer) pairs: every assistant turn is trained given the turns
    before it (LLaMA-Factory's default), and recalled the same way. System turns are the instruction."""
    system = [text for role, text in turns if role == "system"]
    instruction = "\n".join(system) if system else instruction
    spoken = [(role, text) for role, text in turns if role != "system"]
    examples, history = [], []
    for index, (role, text) in enumerate(spoken):
        if role != "assistant":
            continue
        if index == 0 or spoken[index - 1][0] != "user" or index >= 2 and spoken[index - 2][0] != "assistant":
            raise Skip("with turns that do not alternate user and assistant")
        examples.append(Example(instruction, spoken[index - 1][1], text, history=tuple(history)))
        history.append((spoken[index - 1][1], text))
    if not examples:
        raise Skip("without an assistant turn")
    return examples


MAPPERS = {"alpaca": map_alpaca, "prompt-completion": map_prompt_completion, "messages": map_messages,
           "sharegpt": map_sharegpt, "text": map_text, "piqa": map_piqa}
