"""A GGUF file's metadata written from a transformers config and tokenizer, for a base that did not
come from a GGUF file: the keys and conventions of llama.cpp's convert_hf_to_gguf.py for Llama-type
and Qwen2 models (hyperparameters, rope, norm epsilon; the tokenizer as a byte-level BPE "gpt2"
vocabulary with its merges, token types, special token ids and chat template).

`tokenizer.ggml.pre` names the pre-tokenizer llama.cpp must split text with before BPE; llama.cpp's
converter recognises it by hashing how a test string tokenizes, here it is read from the
tokenizer's own pre-tokenizer for the families lorachat writes (GPT-2, SmolLM, Llama 3, Qwen2), and
anything else is written as "default" with a note saying answers may tokenize differently there.
Knows nothing about adapters, sessions or where the file goes (models/gguf_writing.py writes it).
"""
import json

from lorachat.core.errors import LorachatError
from lorachat.models.gguf_names import layout

# the Split regexes of Llama 3's and Qwen2's tokenizer.json, and llama.cpp's names for them
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}
# llama.cpp's token types (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def write_config_metadata(writer, config, tokenizer, name: str) -> list[str]:
    """Add the model's metadata to a gguf.GGUFWriter; returns notes for the user."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_type("model")
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if layout(config).permute_qk:                # llama's converter states the rotary width; qwen2's does not
        writer.add_rope_dimension_count(head_dim)
    _rope(writer, config)
    notes = _vocabulary(writer, tokenizer, config.vocab_size)
    import gguf

    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return notes


def _rope(writer, config) -> None:
    """rope_theta, and linear scaling; other scalings (llama3, yarn) need tensors or keys not written here."""
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is not None:
        writer.add_rope_freq_base(float(theta))
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind != "default":
        raise LorachatError(f"GGUF export: this base uses rope scaling '{kind}', which lorachat does not write "
                            f"(default and linear only)")


def _vocabulary(writer, tokenizer, vocab_size: int) -> list[str]:
    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    model = backend.get("model") or {}
    if model.get("type") != "BPE" or (backend.get("decoder") or {}).get("type") != "ByteLevel":
        raise LorachatError("GGUF export writes byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen2 style); "
                            "this base's is not one: export the adapter alone (`:export NAME FILE.gguf adapter`) "
                            "and load it over a GGUF of the base made by llama.cpp's convert_hf_to_gguf.py")
    tokens, types, notes = _tokens(tokenizer, vocab_size)
    pre, more = _pre_tokenizer(backend.get("pre_tokenizer"))
    notes += more
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in model.get("merges") or []])
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < vocab_size:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    ids = tokenizer("a")["input_ids"]            # what tokenizing adds, as llama.cpp must add it too
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and len(ids) > 1 and ids[-1:] == [tokenizer.eos_token_id])
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)
    return notes


def _tokens(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Every embedding row's token text and type (rows no token uses become `[PADn]`, unused), and
    notes: tokens past the rows (which the model cannot read or write) are left out, and said so."""
    by_id = {i: text for text, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    beyond = sorted(text for i, text in by_id.items() if i >= vocab_size)
    notes = [f"note: the tokenizer's {', '.join(beyond[:3])}{' ...' if len(beyond) > 3 else ''} (id {vocab_size} or "
             f"more) has no embedding row in the model: left out of the GGUF's vocabulary"] if beyond else []
    return tokens, types, notes


def _pre_tokenizer(pre: dict | None) -> tuple[str, list[str]]:
    """llama.cpp's name for a tokenizer.json pre_tokenizer, and notes."""
    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre] if pre else []
    kinds = [(s or {}).get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2", []
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm", []
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        found = _SPLITS.get((steps[0].get("pattern") or {}).get("Regex"))
        if found:
            return found, []
    return "default", [f"note: llama.cpp has no name lorachat knows for this tokenizer's pre-tokenizer "
                       f"({' + '.join(str(k) for k in kinds) or 'none'}): written as 'default', so llama.cpp may "
                       f"split some text (numbers, spaces) into other tokens than lorachat does"]
