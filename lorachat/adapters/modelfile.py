"""An Ollama Modelfile for an exported GGUF: FROM the file (and ADAPTER for an adapter GGUF), a
TEMPLATE in the model's own chat format, PARAMETER stop with its end-of-turn text, greedy decoding
as lorachat answers, and SYSTEM with the instruction the adapter was taught under (without a system
message SmolLM2's template puts in its own, and the base answers some questions with nonsense).

Ollama's templates are Go templates, not Jinja, so the model's Jinja chat template cannot be copied:
it is rendered with marker messages, cut into each role's text before and after the content, and the
Go template built from those pieces is checked by rendering a whole conversation both ways. A chat
template that is not "each message wrapped in its role's text" (one that folds the system message
into the first question, say) gets no TEMPLATE line: Ollama then picks a template for the GGUF's
chat template itself, and the Modelfile says so. Knows nothing about tensors or sessions.
"""
from lorachat.core.prompts import DEFAULT_INSTRUCTION, STOP_MARKER, TEMPLATE, uses_chat_template

_MARK = {"system": "LCsys7d1", "user": "LCusr3b9", "assistant": "LCast5e2", "again": "LCusr8c4"}
_ROLES = ("system", "user", "assistant")


def build(tokenizer, model_file: str, instruction: str | None, adapter_file: str | None = None,
          base_hint: str | None = None) -> tuple[str, list[str]]:
    """(the Modelfile's text, notes). `model_file`: FROM (relative to the Modelfile); `adapter_file`:
    ADAPTER, for an adapter GGUF over `model_file`, the base, of which `base_hint` says where it comes from."""
    notes, lines = [], ["# written by lorachat: ollama create NAME -f THIS_FILE"]
    if base_hint:
        lines.append(f"# FROM is the base this adapter was trained on: {base_hint}")
    lines.append(f"FROM {model_file}")
    if adapter_file:
        lines.append(f"ADAPTER {adapter_file}")
    template, stops = go_template(tokenizer)
    if template is None or '"""' in template:
        notes.append("note: the Modelfile has no TEMPLATE: this chat template is not one lorachat can write as "
                     "Ollama's, so Ollama picks one for the GGUF's chat template (check answers there)")
        lines.append("# no TEMPLATE: Ollama chooses one from the GGUF's tokenizer.chat_template")
    else:
        lines.append(f'TEMPLATE """{template}"""')
    for stop in stops:
        if stop.strip() and '"' not in stop and "\\" not in stop:
            lines.append(f"PARAMETER stop {_quoted(stop)}")
    lines.append("PARAMETER temperature 0")    # greedy, as lorachat answers: taught answers come back verbatim
    system = (instruction or DEFAULT_INSTRUCTION).strip()
    lines.append(f'SYSTEM """{system}"""' if '"""' not in system else f"SYSTEM {_quoted(system)}")
    return "\n".join(lines) + "\n", notes


def _quoted(text: str) -> str:
    return '"' + text.replace("\n", "\\n") + '"'


def go_template(tokenizer) -> tuple[str | None, list[str]]:
    """(Ollama's TEMPLATE or None, stop texts) for `tokenizer`'s chat format."""
    if not uses_chat_template(tokenizer):
        head, _, tail = TEMPLATE.partition("{instruction}")
        middle, _, end = tail.partition("{question}")
        text = f"{_literal(head)}{{{{ .System }}}}{_literal(middle)}{{{{ .Prompt }}}}{_literal(end)}"
        return text, [STOP_MARKER.strip(), *([tokenizer.eos_token] if tokenizer.eos_token else [])]
    parts = role_parts(tokenizer)
    if parts is None:
        return None, [tokenizer.eos_token] if tokenizer.eos_token else []
    body = " else ".join(f'if eq .Role "{role}" }}}}{_literal(before)}{{{{ .Content }}}}{_literal(after)}{{{{'
                         for role, (before, after) in parts.items() if role != "generation")
    text = f"{{{{ range .Messages }}}}{{{{ {body} end }}}}{{{{ end }}}}{_literal(parts['generation'][0])}"
    end_of_turn = parts["assistant"][1].strip() or (tokenizer.eos_token or "")
    return text, [end_of_turn] if end_of_turn else []


def _literal(text: str) -> str:
    """Text as a Go template emits it: as it is, but for `{{`, which would open an action."""
    return text.replace("{{", '{{ "{{" }}')


def role_parts(tokenizer) -> dict | None:
    """{role: (text before its content, text after it)} and {'generation': (assistant's opening, '')},
    cut from renderings of marker messages; None where the chat template is not turns one after another."""
    mark = _MARK
    conversation = [("system", mark["system"]), ("user", mark["user"]), ("assistant", mark["assistant"]),
                    ("user", mark["again"])]

    def render(count: int, generation: bool) -> str:
        messages = [{"role": role, "content": text} for role, text in conversation[:count]]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    try:
        alone, asked, answered = render(1, False), render(2, False), render(3, False)
        opened, whole = render(2, True), render(4, True)
    except Exception:                       # a template that refuses a lone system message, or any of these
        return None
    system_before, _, system_after = alone.partition(mark["system"])
    if not asked.startswith(alone) or not opened.startswith(asked) or not answered.startswith(asked):
        return None
    user_before, _, user_after = asked[len(alone):].partition(mark["user"])
    generation = opened[len(asked):]
    assistant_before, _, assistant_after = answered[len(asked):].partition(mark["assistant"])
    parts = {"system": (system_before, system_after), "user": (user_before, user_after),
             "assistant": (assistant_before, assistant_after), "generation": (generation, "")}
    made = "".join(parts[role][0] + text + parts[role][1] for role, text in conversation) + generation
    return parts if made == whole and assistant_before == generation else None
