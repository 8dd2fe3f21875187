"""What vLLM would refuse or scale wrongly is refused first: per-module ranks, architectures without
LoRA; the base alone is served."""
import json

from lorachat.adapters import live
from tests.helpers import model_dir, plain_peft


def test_serve_refuses_per_module_ranks_and_alphas_vllm_would_scale_wrongly(home, capsys):
    from lorachat import cli

    plain_peft(home / "adapters" / "ranks", 1, target_modules=["q_proj", "fc1"], r=8, lora_alpha=8, rank_pattern={"fc1": 40})
    plain_peft(home / "adapters" / "alphas", 1, alpha_pattern={"q_proj": 32})
    cli.main(["serve", "--model", "tiny", "--home", str(home), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert ("refused 'ranks': rank_pattern {'fc1': 40}: vLLM reads only r and lora_alpha and scales every module by "
            "lora_alpha/r=1, so these modules would be applied at another strength than trained") in lines
    assert any(line.startswith("refused 'alphas': alpha_pattern {'q_proj': 32}") for line in lines)
    assert not any(line.startswith("serve '") for line in lines)


def test_serve_refuses_adapters_on_an_architecture_vllm_serves_without_lora(make_session, home, tmp_path, capsys):
    import dataclasses

    from lorachat import cli
    from lorachat.adapters import disk
    from lorachat.training import lora, recipe

    directory = model_dir(tmp_path, "gpt2")
    session = make_session(model=str(directory))
    live.add_new(session, "notes", lora.lora_config(session.model, dataclasses.replace(recipe.DEFAULTS, r=8)))
    disk.save(session, "notes", {})
    cli.main(["serve", "--model", str(directory), "--home", str(home), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert ("refused 'notes': vLLM's GPT2LMHeadModel does not support LoRA (vllm/model_executor/models/gpt2.py does not "
            "implement SupportsLoRA); `:export notes DIR` writes a merged model vLLM can serve") in lines, lines
    assert not any(line.startswith(("serve '", "note: vLLM's LoRA support")) for line in lines), lines


def test_serve_serves_the_base_alone_and_states_the_positions(home, capsys):
    from lorachat import cli
    from lorachat.models.tiny import ensure_tiny

    assert cli.main(["serve", "--model", "tiny", "--home", str(home), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    base = str(ensure_tiny().resolve())
    assert f"no adapter to serve: the base model alone, as {base!r}" in lines
    assert json.loads(next(line for line in lines if line.startswith("  {")))["model"] == base
    assert ("  (prompt + answer <= 512 tokens, the model's positions: for a prompt of more than 512 - max_tokens tokens "
            "send max_tokens = 512 - its tokens, as the REPL shortens its answer; vLLM refuses a request past them)") in lines
    assert lines[-1].startswith(f"vllm serve {base} --generation-config vllm --chat-template ") and "lora" not in lines[-1]
