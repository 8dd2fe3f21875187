"""lorachat's prompt as a Jinja chat template, for servers whose chat endpoint renders one (vLLM).

A conversation (an optional system message, then user and assistant messages in turn, ending with
a user message) renders exactly as `prompts.render_prompt(tokenizer, system or DEFAULT_INSTRUCTION,
last user message, earlier (user, assistant) pairs)` does, token for token, as the REPL renders it
with the conversation on: every text is stripped as lorachat strips it, and the special tokens
lorachat's tokenization adds (the tiny model's and OPT's BOS `</s>`) are written into the text,
because a chat endpoint tokenizes the rendered text without adding special tokens. A conversation
that does not alternate, or ends with the assistant, is refused. Built from `prompts.TEMPLATE`, so
the two cannot drift apart.
Only for tokenizers without a chat template: those with one are served with their own, which
lorachat already uses. Knows nothing about servers, adapters or files.
"""
import json
import re

from lorachat.core.errors import LorachatError
from lorachat.core.prompts import (
    DEFAULT_INSTRUCTION,
    TEMPLATE,
    prompt_ids,
    render_prompt,
    uses_chat_template,
)

REFUSAL = ("lorachat's prompt is user and assistant messages in turn, ending with a user message, after an "
           "optional system message (the instruction)")
# a question and an instruction that exercise stripping, new lines and the stop marker: the self-check
PROBE = ("  Instruction: What is SOH?\nInput: x  ", " Answer in one line.\n")
EARLIER = (("What is SOH? ", " A hardmask.\n"), ("And SiON?", "Silicon oxynitride."))


def added_tokens(tokenizer) -> tuple[str, str]:
    """(prefix, suffix): the text of the special tokens `tokenizer(text)` adds around `text`."""
    sample = "Instruction: x"
    plain = tokenizer(sample, add_special_tokens=False)["input_ids"]
    full = tokenizer(sample, add_special_tokens=True)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    if start is None:
        raise LorachatError("this tokenizer changes the text's own tokens when it adds special tokens: "
                            "no chat template can reproduce lorachat's prompt (use /v1/completions)")
    prefix, suffix = full[:start], full[start + len(plain):]
    return tokenizer.decode(prefix), tokenizer.decode(suffix)


def build(tokenizer) -> str:
    """The Jinja text for `tokenizer` (which must have no chat template of its own)."""
    if uses_chat_template(tokenizer):
        raise ValueError("a tokenizer with its own chat template is served with that template")
    prefix, suffix = added_tokens(tokenizer)
    fields = re.split(r"\{(instruction|question)\}", TEMPLATE)  # literal, field, literal, ...
    block = " ~ ".join("ns.instruction" if part == "instruction" else "(message['content'] | trim)" if i % 2
                       else json.dumps(part) for i, part in enumerate(fields) if part or i % 2)
    return "\n".join([
        "{#- lorachat's prompt (lorachat/core/prompts.py TEMPLATE), written by `lorachat serve`. System message:"
        " the instruction (none: the default); each user message a block, each assistant message its answer. -#}",
        f"{{%- set ns = namespace(instruction={json.dumps(DEFAULT_INSTRUCTION)}, text='', expect='user', bad=false) -%}}",
        "{%- for message in messages -%}",
        "  {%- if message['role'] == 'system' and loop.first -%}",
        "    {%- set ns.instruction = message['content'] | trim -%}",
        "  {%- elif message['role'] == 'user' and ns.expect == 'user' -%}",
        f"    {{%- set ns.text = ns.text ~ {block} -%}}",
        "    {%- set ns.expect = 'assistant' -%}",
        "  {%- elif message['role'] == 'assistant' and ns.expect == 'assistant' -%}",
        "    {%- set ns.text = ns.text ~ ' ' ~ (message['content'] | trim) ~ '\\n' -%}",
        "    {%- set ns.expect = 'user' -%}",
        "  {%- else -%}",
        "    {%- set ns.bad = true -%}",
        "  {%- endif -%}",
        "{%- endfor -%}",
        "{%- if ns.bad or ns.expect != 'assistant' -%}",
        f"  {{{{- raise_exception({json.dumps(REFUSAL)}) -}}}}",
        "{%- endif -%}",
        f"{{{{- {json.dumps(prefix)} ~ ns.text ~ {json.dumps(suffix)} -}}}}",
    ])


def messages(question: str, instruction: str | None = None, history=()) -> list[dict]:
    """The chat messages a client sends for `question` after `history` turns, as the REPL asks it."""
    system = [{"role": "system", "content": instruction}] if instruction is not None else []
    earlier = [m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    return system + earlier + [{"role": "user", "content": question}]


def render(tokenizer, template: str, messages: list[dict]) -> str:
    """`messages` rendered through `template` as transformers (and so vLLM) renders a chat."""
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def check(tokenizer, template: str) -> None:
    """Raise unless the template gives lorachat's prompt ids for the probe, with and without a
    system message, alone and after earlier turns."""
    question, instruction = PROBE
    prefix, suffix = added_tokens(tokenizer)
    for history in ((), EARLIER):
        for given, expected in ((instruction, instruction), (None, DEFAULT_INSTRUCTION)):
            text = render(tokenizer, template, messages(question, given, history))
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if text != prefix + render_prompt(tokenizer, expected, question, history) + suffix or \
                    ids != prompt_ids(tokenizer, expected, question, history):
                raise LorachatError("the chat template does not reproduce lorachat's prompt for this tokenizer "
                                    "(use /v1/completions with lorachat's exact prompt)")
