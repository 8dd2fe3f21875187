"""lorachat's prompt as a Jinja chat template, for servers whose chat endpoint renders one (vLLM).

A conversation of one user message, after an optional system message, renders exactly as
`prompts.render_prompt(tokenizer, system or DEFAULT_INSTRUCTION, user)` does, token for token:
both texts are stripped as lorachat strips them, and the special tokens lorachat's tokenization
adds (the tiny model's and OPT's BOS `</s>`) are written into the text, because a chat endpoint
tokenizes the rendered text without adding special tokens. Any other conversation is refused
(lorachat's prompt has no turns). Built from `prompts.TEMPLATE`, so the two cannot drift apart.
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

REFUSAL = "lorachat's prompt is one user message, after an optional system message (the instruction)"
# a question and an instruction that exercise stripping, new lines and the stop marker: the self-check
PROBE = ("  Instruction: What is SOH?\nInput: x  ", " Answer in one line.\n")


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
    pieces = [f"ns.{part}" if i % 2 else json.dumps(part) for i, part in enumerate(fields) if part or i % 2]
    expression = " ~ ".join([*([json.dumps(prefix)] if prefix else []), *pieces, *([json.dumps(suffix)] if suffix else [])])
    return "\n".join([
        "{#- lorachat's prompt (lorachat/core/prompts.py TEMPLATE), written by `lorachat serve`."
        " System message: the instruction (none: the default). -#}",
        f"{{%- set ns = namespace(instruction={json.dumps(DEFAULT_INSTRUCTION)}, question=none, extra=false) -%}}",
        "{%- for message in messages -%}",
        "  {%- if message['role'] == 'system' and loop.first -%}",
        "    {%- set ns.instruction = message['content'] | trim -%}",
        "  {%- elif message['role'] == 'user' and ns.question is none -%}",
        "    {%- set ns.question = message['content'] | trim -%}",
        "  {%- else -%}",
        "    {%- set ns.extra = true -%}",
        "  {%- endif -%}",
        "{%- endfor -%}",
        "{%- if ns.extra or ns.question is none -%}",
        f"  {{{{- raise_exception({json.dumps(REFUSAL)}) -}}}}",
        "{%- endif -%}",
        f"{{{{- {expression} -}}}}",
    ])


def render(tokenizer, template: str, messages: list[dict]) -> str:
    """`messages` rendered through `template` as transformers (and so vLLM) renders a chat."""
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def check(tokenizer, template: str) -> None:
    """Raise unless the template gives lorachat's prompt ids for the probe, with and without a system message."""
    question, instruction = PROBE
    cases = [([{"role": "system", "content": instruction}, {"role": "user", "content": question}], instruction),
             ([{"role": "user", "content": question}], DEFAULT_INSTRUCTION)]
    prefix, suffix = added_tokens(tokenizer)
    for messages, expected in cases:
        text = render(tokenizer, template, messages)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if text != prefix + render_prompt(tokenizer, expected, question) + suffix or \
                ids != prompt_ids(tokenizer, expected, question):
            raise LorachatError("the chat template does not reproduce lorachat's prompt for this tokenizer "
                                "(use /v1/completions with lorachat's exact prompt)")
