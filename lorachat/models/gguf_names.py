"""transformers' tensor names and layouts -> llama.cpp's, for the architectures lorachat writes as GGUF.

llama.cpp names a Llama's `model.layers.3.self_attn.q_proj.weight` `blk.3.attn_q.weight`; the `gguf`
package holds those names (TensorNameMap, the table llama.cpp's own converters use), so they are
asked for there, never spelled here. Llama-type models (Llama, Mistral, SmolLM2) also store the
rows of q_proj and k_proj in another order: llama.cpp's convert_hf_to_gguf.py interleaves the two
rotary halves of each head, and transformers' GGUF reader undoes exactly that on load
(LlamaTensorProcessor._reverse_permute_weights), so `to_gguf_rows` is its inverse. Qwen2's rotary
layout is the one transformers uses: nothing is reordered. Other architectures are refused with one
line naming the supported ones: their norms, fused tensors or rotary layouts differ in ways an
unchecked writer would get silently wrong.

Knows nothing about adapters, sessions or files: models/gguf_writing.py writes, adapters decide what.
"""
from dataclasses import dataclass

from lorachat.core.errors import LorachatError


@dataclass(frozen=True)
class Layout:
    """How one transformers model type is written: its GGUF `general.architecture`, and whether its
    q/k rows are reordered for llama.cpp's rotary embedding."""
    architecture: str
    permute_qk: bool


# model_type -> layout; convert_hf_to_gguf.py writes Mistral as a Llama (its LlamaModel covers both)
LAYOUTS = {
    "llama": Layout("llama", True),
    "mistral": Layout("llama", True),
    "qwen2": Layout("qwen2", False),
}
SUPPORTED = "Llama-family models (Llama, SmolLM2, Mistral) and Qwen2"


def layout(config) -> Layout:
    """The layout of a transformers config, or one line naming what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise LorachatError(f"GGUF export writes {SUPPORTED} ({', '.join(sorted(LAYOUTS))}); this base is "
                            f"'{model_type}' ({(getattr(config, 'architectures', None) or ['?'])[0]}): "
                            f"`:export NAME DIR` writes it as a transformers folder")
    return LAYOUTS[model_type]


def gguf_names(config, hf_names) -> dict[str, str]:
    """{transformers name: GGUF name} for every weight in `hf_names`; one line for a name llama.cpp
    has no place for (the model is not the plain architecture its config claims)."""
    import gguf

    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[layout(config).architecture]
    table = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    names, unmapped = {}, []
    for hf_name in hf_names:
        if hf_name.endswith(".rotary_emb.inv_freq"):    # computed from the config, never stored by llama.cpp
            continue
        found = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None:
            unmapped.append(hf_name)
        else:
            names[hf_name] = found
    if unmapped:
        raise LorachatError(f"GGUF export: llama.cpp's {layout(config).architecture} has no tensor for "
                            f"{unmapped[0]}" + (f" (and {len(unmapped) - 1} more)" if len(unmapped) > 1 else ""))
    return names


def to_gguf_rows(tensor, hf_name: str, config):
    """`tensor` (torch, transformers' layout) in llama.cpp's row order: q_proj and k_proj rows of a
    Llama-type model regrouped per head from [first half | second half] to interleaved pairs."""
    if not layout(config).permute_qk:
        return tensor
    heads = config.num_attention_heads
    if ".self_attn.k_proj." in hf_name:
        heads = getattr(config, "num_key_value_heads", None) or heads
    elif ".self_attn.q_proj." not in hf_name:
        return tensor
    rows = tensor.shape[0]
    return tensor.reshape(heads, 2, rows // heads // 2, *tensor.shape[1:]).transpose(1, 2).reshape(tensor.shape)

