"""Models of a real checkpoint's shape with random weights (no download), and the tokenizer.

Numbers are copied from the hub's config.json of facebook/opt-125m and facebook/opt-2.7b. The
tokenizer is the built-in tiny model's (under 2,048 ids), so only small ids are ever fed; the vocab
stays at OPT's 50,272 so the output layer costs what it costs in the real model.
Knows nothing about training or timing.
"""
import torch

OPT_VOCAB = 50272
SHAPES = {
    "opt-125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072),
    "opt-2.7b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, vocab_size=1024),  # smoke only
}
SEED = 0

def tokenizer():
    from transformers import AutoTokenizer

    from lorachat.models.tiny import ensure_tiny

    return AutoTokenizer.from_pretrained(str(ensure_tiny()))


def config(shape: str):
    """The OPTConfig of `shape` (the rest of the hub's config.json is OPTConfig's own defaults)."""
    from transformers import OPTConfig

    dims = dict(vocab_size=OPT_VOCAB) | SHAPES[shape]
    return OPTConfig(max_position_embeddings=2048, word_embed_proj_dim=dims["hidden_size"],
                     pad_token_id=1, bos_token_id=2, eos_token_id=2, dropout=0.1, attention_dropout=0.0, **dims)


def build(shape: str, device: str, dtype=torch.float32):
    """A fresh OPTForCausalLM of `shape`, random weights from a fixed seed: the same model every call."""
    from transformers import OPTForCausalLM

    state = torch.random.get_rng_state()
    torch.manual_seed(SEED)
    try:
        with torch.device(device):
            model = OPTForCausalLM(config(shape))
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.max_length = None
    return model.to(dtype).eval()


def parameters(model) -> int:
    """The base model's parameters (LoRA matrices injected later not counted)."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
