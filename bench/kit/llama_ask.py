"""Ask llama.cpp (llama-cpp-python) questions of a GGUF file, as the bench's gguf suite needs it; run
with a Python that has llama_cpp (its own virtualenv: it is never a dependency of lorachat):

    python bench/kit/llama_ask.py MODEL.gguf [--lora ADAPTER.gguf] --system TEXT QUESTION ...

Each question is rendered with the file's own chat template (tokenizer.chat_template, through
Jinja2 as llama-cpp-python's chat formatter does), a system message first, and answered greedily
(temperature 0) up to the end-of-turn token or 64 tokens. Prints one JSON object: {question: answer}
and the llama_cpp version. Imports nothing of lorachat.
"""
import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--lora")
    p.add_argument("--system", required=True)
    p.add_argument("questions", nargs="+")
    args = p.parse_args(argv)
    import jinja2
    import llama_cpp

    llm = llama_cpp.Llama(model_path=args.model, lora_path=args.lora, n_ctx=512, n_threads=2, seed=0, verbose=False)
    meta = llm.metadata
    template = jinja2.Environment(loader=jinja2.BaseLoader()).from_string(meta["tokenizer.chat_template"])
    eos = llm.token_eos()
    answers = {}
    for question in args.questions:
        messages = [{"role": "system", "content": args.system}, {"role": "user", "content": question}]
        text = template.render(messages=messages, add_generation_prompt=True,
                               bos_token=llm.detokenize([llm.token_bos()]).decode(), eos_token=llm.detokenize([eos]).decode())
        tokens = llm.tokenize(text.encode(), add_bos=meta.get("tokenizer.ggml.add_bos_token") == "true", special=True)
        out = llm.create_completion(tokens, max_tokens=64, temperature=0.0, top_k=1, repeat_penalty=1.0)
        answers[question] = out["choices"][0]["text"].strip()
    print(json.dumps({"answers": answers, "llama_cpp": llama_cpp.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
