"""One rendering of a question, shared by asking, training, recall and serving, so a taught answer comes back verbatim.

The rule for "the question as the user asks it" (`asked`): an example `{"instruction": I, "input": Q}`
is the question Q asked with instruction I in force; an example whose `input` is empty is the
question I, asked under the default instruction. Surrounding white space never counts (the REPL
strips what is typed).

Tokenizers without a chat template get the notebook's format
`Instruction: {instruction}\\nInput: {question}\\nAnswer:`; tokenizers with one use it (the
instruction as the system message where the template allows one).

A question may come with the turns of a conversation before it (`history`: (question, answer)
pairs, oldest first): through the chat template as earlier user and assistant messages; in the
notebook's format as earlier blocks, each answered, one after another. A taught example with a
history is the same question asked in that conversation. Knows nothing about files.
"""
from dataclasses import dataclass

DEFAULT_INSTRUCTION = "Answer the question."
TEMPLATE = "Instruction: {instruction}\nInput: {question}\nAnswer:"
# where the model starts another block on a new line, the answer ends; "Instruction:" inside a line
# (an answer that mentions a sheet titled "Instruction: Assembly") is part of the answer
STOP_MARKER = "\nInstruction:"
IGNORE = -100                  # label for tokens that carry no loss
MAX_NEW_TOKENS = 64            # the longest answer asking generates by default (:set max_new_tokens)


@dataclass(frozen=True)
class Example:
    """One lesson: a question (`input`) under an `instruction` with its `output`, or raw `text`;
    `history`: the conversation's earlier (question, answer) turns the question is asked after."""
    instruction: str = ""
    input: str = ""
    output: str = ""
    text: str | None = None
    history: tuple = ()


def asked(example: Example) -> tuple[str, str]:
    """(instruction in force, question typed) for an instruction/input example: the one rule."""
    question = example.input.strip()
    if not question:
        return DEFAULT_INSTRUCTION, example.instruction.strip()
    return example.instruction.strip() or DEFAULT_INSTRUCTION, question


def shared_instruction(examples) -> str | None:
    """The instruction every question among `examples` is asked under, or None when they differ
    (or there are no questions): what a dataset puts in force when it is selected."""
    found = {asked(e)[0] for e in examples if e.text is None}
    return found.pop() if len(found) == 1 else None


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, instruction: str, question: str, history=()) -> str:
    """The text the model reads before its answer to `question`, after the `history` turns."""
    instruction, question = instruction.strip(), question.strip()
    turns = [(q.strip(), a.strip()) for q, a in history]
    if not uses_chat_template(tokenizer):
        blocks = [TEMPLATE.format(instruction=instruction, question=q) + " " + a + "\n" for q, a in turns]
        return "".join(blocks) + TEMPLATE.format(instruction=instruction, question=question)
    earlier = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    user = [{"role": "user", "content": question}]
    system = [{"role": "system", "content": instruction}] if instruction else []
    try:
        return tokenizer.apply_chat_template(system + earlier + user, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates that reject a system turn: fold the instruction into the first question
        first = (earlier or user)[0]
        merged = [{"role": "user", "content": f"{instruction}\n\n{first['content']}" if instruction else first["content"]}]
        rest = (earlier + user)[1:]
        return tokenizer.apply_chat_template(merged + rest, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, instruction: str, question: str, history=()) -> list[int]:
    """Token ids of the question as asked: exactly the prefix a training example starts with."""
    text = render_prompt(tokenizer, instruction, question, history)
    return tokenizer(text, add_special_tokens=not uses_chat_template(tokenizer))["input_ids"]


def example_ids(tokenizer, example: Example) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for training: prompt masked out, answer ending in EOS carries the loss."""
    eos = tokenizer.eos_token_id
    if example.text is not None:
        ids = tokenizer(example.text)["input_ids"]
        ids = ids + [eos] if eos is not None and ids[-1:] != [eos] else ids
        return ids, list(ids)
    instruction, question = asked(example)
    prompt = prompt_ids(tokenizer, instruction, question, example.history)
    answer = answer_ids(tokenizer, instruction, question, example.output, prompt, example.history)
    return prompt + answer, [IGNORE] * len(prompt) + answer


def answer_ids(tokenizer, instruction, question, answer, prompt=None, history=()) -> list[int]:
    """The tokens greedy decoding must produce after the prompt for `answer`, EOS included."""
    answer = answer.strip()
    prompt = prompt if prompt is not None else prompt_ids(tokenizer, instruction, question, history)
    separator = "" if uses_chat_template(tokenizer) else " "
    text = render_prompt(tokenizer, instruction, question, history) + separator + answer
    full = tokenizer(text, add_special_tokens=not uses_chat_template(tokenizer))["input_ids"]
    if full[:len(prompt)] == prompt:
        ids = full[len(prompt):]
    else:  # the answer merged with the prompt's last token: keep the prompt exactly as asked
        ids = tokenizer(separator + answer, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return ids + [eos] if eos is not None else ids


def stop_ids(tokenizer, model=None) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS (what a taught answer ends with) and every end
    token the model's generation config names (a chat model's end of turn: Llama 3's <|eot_id|>,
    Gemma's <end_of_turn>). generate's eos_token_id replaces the config's, so it is given them all."""
    named = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    named = named if isinstance(named, (list, tuple)) else [named]
    return [i for i in dict.fromkeys([tokenizer.eos_token_id, *named]) if i is not None]


def clean_answer(text: str) -> str:
    """The answer proper: cut where a new line starts another `Instruction:` block, surrounding
    space stripped (what a server's stop string "\nInstruction:" and a strip give too)."""
    return text.split(STOP_MARKER, 1)[0].strip()
