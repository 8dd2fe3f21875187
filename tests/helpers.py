"""Shared by the tests: the pseudo-terminal that drives the interactive REPL, and builders of
sessions' adapters, datasets and model folders (no test lives here)."""
import json
import os
import select
import subprocess
import sys
import time

import torch

from lorachat.adapters import disk, live
from lorachat.core.prompts import DEFAULT_INSTRUCTION, Example

_unread: dict[int, bytes] = {}  # bytes read past a marker, handed to the next read of that fd


def read_until(fd, marker: bytes, timeout: float) -> bytes:
    """Bytes from `fd` up to and including `marker` (what came after it is kept for the next read, so
    a prompt printed in the same chunk as the output before it is not lost); AssertionError (with
    the tail) on timeout."""
    seen, deadline = _unread.pop(fd, b""), time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"did not see {marker!r}; got {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:  # end of file (a pipe whose writer is gone): nothing more can come, so fail now
                raise AssertionError(f"the output ended before {marker!r}; got {seen[-500:]!r}")
            seen += chunk
    end = seen.find(marker) + len(marker) if marker in seen else len(seen)
    if seen[end:]:
        _unread[fd] = seen[end:]
    return seen[:end]


def read_some(fd, timeout: float) -> bytes:
    """Whatever is there: bytes left over from the last read, else the next bytes to arrive."""
    if _unread.get(fd):
        return _unread.pop(fd)
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"nothing on the terminal for {timeout} s"
    return os.read(fd, 4096)


def spawn_repl(home, stdout=None, **env):
    """`lorachat --model tiny` on a pseudo-terminal, as a person would run it, at its first prompt.
    `stdout` (e.g. subprocess.PIPE) replaces the terminal as standard output; `env` adds variables.

    Returns (process, fd of the terminal's other end); the caller kills the process and closes fd."""
    import pty

    main, child = pty.openpty()
    _unread.pop(main, None)  # left by an earlier terminal that had this fd number
    env = dict(os.environ, TERM="xterm", COLUMNS="200", LINES="50", PROMPT_TOOLKIT_NO_CPR="1", **env)
    proc = subprocess.Popen([sys.executable, "-m", "lorachat", "--model", "tiny", "--home", str(home)],
                            stdin=child, stdout=child if stdout is None else stdout, stderr=child, env=env,
                            start_new_session=True)
    os.close(child)
    try:
        read_until(main, b"default>", 120)
    except BaseException:
        proc.kill()
        os.close(main)
        raise
    return proc, main


def shelve(session, names, **kw):
    """Saved adapters with random (non-zero) LoRA weights, made through the API :train uses."""
    for seed, name in enumerate(names, start=1):
        torch.manual_seed(seed)
        live.add_new(session, name, lora_config(**kw))
        disk.save(session, name, {"dataset": "test", "examples": 2})
        live.remove(session, name)


def lora_config(r=4, alpha=8, targets=("q_proj", "v_proj")):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)


def logits(session):
    ids = torch.tensor([[2, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        return session.model(input_ids=ids).logits


def examples_of(pairs):
    return [Example(DEFAULT_INSTRUCTION, q, a) for q, a in pairs]


def write_dataset(home, name, pairs):
    """The dataset file as any tool would write it (not through :add)."""
    folder = home / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for question, answer in pairs:
            f.write(json.dumps({"instruction": DEFAULT_INSTRUCTION, "input": question, "output": answer}) + "\n")


TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def model_dir(tmp_path, arch: str, layers: int = 2, ffn: int = 256, seed: int = 0):
    """A small model directory (hidden 64) written with plain transformers, with the tiny tokenizer's
    vocabulary: OPT, Llama or Qwen2 (with a chat template), or GPT-2."""
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
    )

    from lorachat.models.tiny import ensure_tiny

    tok = AutoTokenizer.from_pretrained(ensure_tiny())
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    if arch == "opt":
        model = OPTForCausalLM(OPTConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=2, ffn_dim=ffn,
                                         max_position_embeddings=256, word_embed_proj_dim=64, **ids))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=ffn, num_hidden_layers=layers,
                                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, **ids))
        tok.chat_template = TEMPLATE
    elif arch == "qwen2":   # q/k/v biases, grouped keys (4 heads over 2), llama.cpp's other rotary layout
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(Qwen2Config(hidden_size=64, intermediate_size=ffn, num_hidden_layers=layers,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **ids))
        tok.chat_template = TEMPLATE
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=layers, n_head=2, n_positions=256, **ids))
    directory = tmp_path / arch
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def plain_peft(directory, seed, **config):
    """An adapter made with plain PEFT on the tiny model (non-zero weights; a modules_to_save copy
    made different from the base's), no lorachat.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorachat.models.tiny import ensure_tiny

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(ensure_tiny()),
                           LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                         "init_lora_weights": False, **config}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".modules_to_save." in name:
                param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(directory)


# --- `lorachat train` as a process, alone or under torchrun --------------------------------------

def environment(**extra):
    """A child process's environment: one thread each (two ranks share the two cores), this checkout
    importable, and `extra` (e.g. LORACHAT_PROGRESS_SECONDS="0.5": a kill test waits for a progress
    line, which would come after 5 s)."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
                **extra)


def train_command(home, *words, ranks=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] \
        if ranks > 1 else [sys.executable]
    return [*launcher, "-m", "lorachat", "train", "--model", "tiny", "--home", str(home), "--dataset", "films", *words]


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def write_gguf(path, hidden: int = 64, layers: int = 2, heads: int = 4, ffn: int = 128, says: dict | None = None):
    """A small GGUF file as llama.cpp writes one (a random float32 Llama, the tiny tokenizer's
    vocabulary as a GPT-2 style BPE, a chat template), for converting in tests: about a megabyte.
    `says`: header values that lie about the tensors, e.g. {"block_count": 3}."""
    import numpy as np
    from gguf import GGUFWriter

    from lorachat.models.tiny import build_tokenizer

    tok = build_tokenizer()
    backend = json.loads(tok.backend_tokenizer.to_str())
    tokens = sorted(backend["model"]["vocab"], key=backend["model"]["vocab"].get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in backend["model"]["merges"]]
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    says = says or {}
    writer.add_block_count(says.get("block_count", layers))
    writer.add_context_length(512)
    writer.add_embedding_length(says.get("embedding_length", hidden))
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([1] * len(tokens))
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(TEMPLATE)
    rng = np.random.default_rng(0)

    def tensor(name, *shape):
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{part}.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    tensor("output.weight", len(tokens), hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
