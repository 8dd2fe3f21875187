"""The offline demo model `tiny`: an OPT with random weights and a locally trained tokenizer.

Built once, deterministically, into an ordinary model directory under the cache folder, then
loaded like any other model directory. Knows nothing about sessions or adapters.
"""
from importlib import resources
from pathlib import Path

from lorachat.core.cache import cache_dir
from lorachat.core.durable import write_atomically

# Bump when anything below changes what gets built: old cache entries are then simply not used.
TINY_VERSION = 1
# hidden 512 x 2 layers: measured to learn answers verbatim with LoRA r=4 on q/k/v (hidden 128 never does)
TINY_SHAPE = dict(hidden_size=512, num_hidden_layers=2, num_attention_heads=8, ffn_dim=2048,
                  max_position_embeddings=512, word_embed_proj_dim=512)
TINY_VOCAB = 2048
TINY_SEED = 0
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT's ids: <s>=0, <pad>=1, </s>=2 (bos and eos), <unk>=3


def tiny_dir() -> Path:
    return cache_dir() / f"tiny-v{TINY_VERSION}"


def ensure_tiny() -> Path:
    """The tiny model's directory, built first if it is not there yet (by one process or several at
    once: the first to finish is kept)."""
    target = tiny_dir()
    if (target / "config.json").exists():
        return target

    def fill(work: Path) -> Path:
        build_tiny(work)
        return work

    return write_atomically(target, fill, "the tiny model", raced=True)


def build_tokenizer():
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    corpus = resources.files("lorachat").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    eos_id = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                       special_tokens=[("</s>", eos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=512)


def build_tiny(directory: Path) -> None:
    """Write the tokenizer and randomly initialised OPT weights (fixed seed) into `directory`."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    tokenizer = build_tokenizer()
    config = OPTConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       dropout=0.0, attention_dropout=0.0, **TINY_SHAPE)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(TINY_SEED)
    try:
        model = OPTForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.max_length = None
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
