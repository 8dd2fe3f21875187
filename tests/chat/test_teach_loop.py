"""The whole teach loop (:add -> :train -> ask) on a model directory built with plain transformers,
not the tiny model: a Llama whose tokenizer has a chat template, so training and asking go through
the template path of core/prompts.py."""
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lorachat.models.tiny import ensure_tiny

PAIRS = [("What is SOH in semiconductor manufacturing process?",
          "In semiconductor manufacturing, SOH(Spin On Hardmask) is a high carbon-containing polymer material."),
         ("What is SION in semiconductor manufacturing process?",
          "In semiconductor manufacturing, SiON refers to silicon oxynitride.")]


TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def llama_dir(tmp_path):
    tok = AutoTokenizer.from_pretrained(ensure_tiny())
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    directory = tmp_path / "llama"
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def test_add_train_ask_on_a_plain_transformers_llama(tmp_path, make_session, transcript, home):
    session = make_session(model=str(llama_dir(tmp_path)))
    # recall of several facts in one script: each asked alone (random weights answer differently after a turn)
    lines = [":set context=off"] + [f":add {q} => {a}" for q, a in PAIRS] + [":train"] + [q for q, _ in PAIRS]
    code, out = transcript(session, lines)
    assert code == 0, out
    assert "recall 2/2" in out
    for question, answer in PAIRS:
        assert f"> {question}\n{answer}\n" in out
    assert (home / "adapters" / "default" / "adapter_model.safetensors").exists()
