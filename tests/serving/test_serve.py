"""`lorachat serve`: the preflight against vLLM's rules, the rank arithmetic, the command line, the chat
template (rendered by transformers' apply_chat_template, as vLLM renders it) against lorachat's own
prompt token for token, and the line when vLLM is missing. vLLM itself is not installed here: a real
server run is not part of these tests (README says so)."""
import dataclasses
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, LlamaConfig

from lorachat import cli
from lorachat.adapters import disk, live, merging
from lorachat.chat.session import Session
from lorachat.chat.ui import PlainUI
from lorachat.core.errors import LorachatError
from lorachat.core.prompts import (
    DEFAULT_INSTRUCTION,
    STOP_MARKER,
    prompt_ids,
    render_prompt,
)
from lorachat.models.loader import load_model
from lorachat.models.tiny import ensure_tiny
from lorachat.serving import chat_template, preflight, server
from lorachat.serving.preflight import MAX_LORA_RANKS, Served, max_lora_rank
from lorachat.training import lora, recipe

LLAMA_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


NO_SYSTEM_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
                      "{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]")


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30) | st.sampled_from(
    ["", "  ", "What is SOH?", " Instruction: x\nInput: y ", "</s>", "a\n\nb", "\tAnswer in one line.\n"])


EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tiny_session(home):
    return Session(load_model("tiny", device="cpu"), home, PlainUI(io.StringIO()))


def save(session, name, r, **meta):
    """An adapter as :train saves it (lorachat's LoraConfig, PEFT's files, lorachat.json)."""
    config = lora.lora_config(session.model, dataclasses.replace(recipe.DEFAULTS, r=r))
    live.add_new(session, name, config)
    disk.save(session, name, meta)


def plain_peft(directory, **config):
    """An adapter made with plain PEFT on the tiny model: no lorachat.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(ensure_tiny())
    get_peft_model(base, LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **config})
                   ).save_pretrained(directory)


def llama_dir(directory: Path, template=LLAMA_TEMPLATE, weights=False) -> Path:
    """A Llama model directory whose tokenizer has a chat template (weights only when asked)."""
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny())
    tokenizer.chat_template = template
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    config.architectures = ["LlamaForCausalLM"]
    if weights:
        from transformers import LlamaForCausalLM

        LlamaForCausalLM(config).save_pretrained(directory)
    config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def workspace(tiny_cache, tmp_path_factory):
    """The issue's scenario: two adapters trained by lorachat, one made for another base (a Llama),
    one DoRA made with plain PEFT. The folder name has a space, so the command must quote."""
    home = tmp_path_factory.mktemp("serve") / "work space"
    session = tiny_session(home)
    save(session, "films", 16, instruction="Answer in one line.", max_answer_tokens=80,
         ungated={"kept": 0.317, "agree": 0.914, "length": 1.01, "probes": 303})
    save(session, "music", 8)  # as older adapters are: no instruction, no max_answer_tokens
    llama = Session(load_model(str(llama_dir(home.parent / "llama", weights=True)), device="cpu"), home,
                    PlainUI(io.StringIO()))
    save(llama, "llama-notes", 4)
    plain_peft(home / "adapters" / "dora", use_dora=True)
    return home


def run_serve(capsys, *argv):
    code = cli.main(["serve", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_printed_max_tokens_lets_every_answer_run_as_long_as_the_repls(workspace):
    """max_tokens is the REPL's default max_new_tokens, or the longest taught answer where longer:
    capped at short taught answers (a dozen tokens), a served adapter would cut every other answer."""
    from lorachat.serving import preflight

    path = workspace / "adapters" / "films"
    config = json.loads((path / "adapter_config.json").read_text())
    for meta, tokens in [({"max_answer_tokens": 12}, 64), ({"max_answer_tokens": 80}, 80), ({}, 64),
                         ({"max_answer_tokens": "12"}, 64), ({"max_answer_tokens": True}, 64)]:
        assert preflight.check("films", path, config, meta, "OPTForCausalLM").max_tokens == tokens, meta
    with pytest.raises(LorachatError, match="a name starting with '-' reads as an option on vLLM's command line"):
        preflight.check("-x", path, config, {}, "OPTForCausalLM")   # --lora-modules -x=PATH


def test_dry_run_serves_the_two_lorachat_adapters_and_says_why_not_the_others(workspace, capsys):
    code, out, err = run_serve(capsys, "--model", "tiny", "--home", str(workspace), "--dry-run", "--", "--port", "8001")
    assert code == 0, err
    lines = out.splitlines()
    template = workspace.resolve() / "serve" / "tiny.jinja"
    adapter = workspace.resolve() / "adapters"
    assert shlex.split(lines[-1]) == [
        "vllm", "serve", str(ensure_tiny().resolve()), "--enable-lora",
        "--lora-modules", f"films={adapter / 'films'}", f"music={adapter / 'music'}",
        "--max-lora-rank", "16", "--max-loras", "2", "--max-cpu-loras", "2", "--generation-config", "vllm",
        "--chat-template", str(template), "--port", "8001"]
    assert "serve 'films': r=16" in lines and "serve 'music': r=8" in lines
    gate = "  the ask-time gate stays in lorachat: outside it '{}' answers every question ({})"
    assert lines[lines.index("serve 'films': r=16") + 1] == gate.format("films", (
        "ungated: kept 31.7% of 303 probes exactly, 91.4% of the base's answer tokens, answers 1.01× the base's length"))
    assert lines[lines.index("serve 'music': r=8") + 1] == gate.format("music", "ungated figures not measured: :eval music gate=off")
    assert f"left out 'llama-notes': made for base model {str(workspace.parent / 'llama')!r}, not 'tiny'" in lines
    assert "refused 'dora': DoRA (use_dora): vLLM does not support DoRA" in lines
    requests = {r["model"]: r for r in (json.loads(line) for line in lines if line.startswith("  {"))}
    assert requests["films"] == {"model": "films", "messages": [
        {"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "QUESTION"}],
        "stop": [STOP_MARKER], "max_tokens": 80, "temperature": 0}   # its longest taught answer: above 64
    assert requests["music"]["messages"][0]["content"] == DEFAULT_INSTRUCTION
    assert requests["music"]["max_tokens"] == 64  # the REPL's default max_new_tokens
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny())
    for question in ("What is SOH?", "  two\nlines "):
        messages = [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, chat_template=template.read_text(), tokenize=False,
                                             add_generation_prompt=True)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == prompt_ids(tokenizer, "Answer in one line.", question)


def test_without_vllm_it_exits_1_with_one_line_saying_how_to_install_it(workspace, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `vllm` on it
    code, out, err = run_serve(capsys, "--model", "tiny", "--home", str(workspace))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("error: vLLM is not installed here") and "pip install vllm" in err


@pytest.mark.parametrize("change, reason", [
    (dict(use_dora=True), "DoRA (use_dora)"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(bias="all"), "bias='all'"),
    (dict(lora_bias=True), "lora_bias"),
    (dict(init_lora_weights="pissa"), "init_lora_weights='pissa'"),
    (dict(r=513), "r=513 is above vLLM's largest --max-lora-rank (512)"),
    (dict(r=8, rank_pattern={"q_proj": 1024}), "r=1024 is above"),
    (dict(r=0), "r=0"),
])
def test_preflight_refuses_what_vllm_refuses(plain_adapter, change, reason):
    """A real PEFT adapter, its adapter_config.json changed to each feature vLLM refuses."""
    config = json.loads((plain_adapter / "adapter_config.json").read_text())
    assert preflight.check("a", plain_adapter, config, {}, "OPTForCausalLM").rank == 4  # as PEFT wrote it: served
    with pytest.raises(LorachatError, match=re.escape(reason)):
        preflight.check("a", plain_adapter, {**config, **change}, {}, "OPTForCausalLM")


def test_preflight_refuses_modules_vllm_does_not_map(tiny_cache, tmp_path):
    plain_peft(tmp_path / "head", target_modules=["q_proj", "lm_head"])  # PEFT wraps OPT's lm_head; vLLM's OPT does not
    config = json.loads((tmp_path / "head" / "adapter_config.json").read_text())
    with pytest.raises(LorachatError, match="targets lm_head, which vLLM's LoRA support for OPTForCausalLM does not map"):
        preflight.check("head", tmp_path / "head", config, {}, "OPTForCausalLM")
    assert preflight.check("head", tmp_path / "head", config, {}, "LlamaForCausalLM").rank == 4
    assert preflight.check("head", tmp_path / "head", config, {}, "SomeOtherForCausalLM").rank == 4  # vLLM checks those


@pytest.fixture(scope="module")
def plain_adapter(tiny_cache, tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "adapter"
    plain_peft(path)
    return path


def test_rank_arithmetic_takes_a_cat_merge_at_the_sum_of_its_sources(tiny_cache, tmp_path, capsys):
    assert [max_lora_rank([r]) for r in (1, 2, 8, 9, 16, 17, 24, 300, 321, 512)] == \
        [1, 8, 8, 16, 16, 32, 32, 320, 512, 512]
    with pytest.raises(StopIteration):
        max_lora_rank([MAX_LORA_RANKS[-1] + 1])  # the preflight refuses those first
    session = tiny_session(tmp_path)
    save(session, "wide", 16)
    save(session, "narrow", 8)
    merging.merge(session, ["wide", "narrow"], "both", merging.MergeOptions(method="cat"))
    assert json.loads((tmp_path / "adapters" / "both" / "adapter_config.json").read_text())["r"] == 24
    code, out, _ = run_serve(capsys, "--model", "tiny", "--home", str(tmp_path), "--dry-run", "--max-loras", "1")
    assert code == 0
    assert "serve 'both': r=24 (cat merge of wide r=16 + narrow r=8)" in out.splitlines()
    argv = shlex.split(out.splitlines()[-1])
    assert argv[argv.index("--max-lora-rank") + 1] == "32"
    assert (argv[argv.index("--max-loras") + 1], argv[argv.index("--max-cpu-loras") + 1]) == ("1", "3")


def test_the_command_line_is_one_copy_pasteable_line():
    plan = server.Plan(server.ServeOptions(model="m", home=Path("/h"), vllm_args=("--api-key", "a b")), "/base dir", "X")
    plan.served = [Served("a", Path("/w/it's here/a"), 4, DEFAULT_INSTRUCTION, 64),
                   Served("b", Path("/w/x=1,2/b"), 40, DEFAULT_INSTRUCTION, 64)]
    argv = server.command(plan)
    assert shlex.split(server.shown(argv)) == argv and "\n" not in server.shown(argv)
    assert argv[:6] == ["vllm", "serve", "/base dir", "--enable-lora", "--lora-modules", "a=/w/it's here/a"]
    assert json.loads(argv[6]) == {"name": "b", "path": "/w/x=1,2/b", "base_model_name": "/base dir"}  # vLLM's JSON form
    assert argv[7:] == ["--max-lora-rank", "64", "--max-loras", "2", "--max-cpu-loras", "2",
                        "--generation-config", "vllm", "--api-key", "a b"]
    plan.served[1] = Served("b", Path("/w/b"), 4, None, 64)  # taught under several instructions
    lines = server.report(plan)
    at = next(i for i, line in enumerate(lines) if '"model": "b"' in line)
    assert json.loads(lines[at])["messages"][0] == {"role": "system", "content": "INSTRUCTION"}
    assert "INSTRUCTION is the question's own" in lines[at + 1]
    plan.served = []   # the base alone: no LoRA flags
    assert server.command(plan) == ["vllm", "serve", "/base dir", "--generation-config", "vllm", "--api-key", "a b"]


@given(question=TEXT, instruction=TEXT)
@EXAMPLES
def test_the_template_renders_lorachat_prompt_token_for_token(tiny_cache, question, instruction):
    tokenizer = _tiny_tokenizer()
    template = chat_template.build(tokenizer)
    for messages, asked_under in (
            ([{"role": "system", "content": instruction}, {"role": "user", "content": question}], instruction),
            ([{"role": "user", "content": question}], DEFAULT_INSTRUCTION)):
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
        assert text == tokenizer.bos_token + render_prompt(tokenizer, asked_under, question)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == prompt_ids(tokenizer, asked_under, question)


@given(question=TEXT, instruction=TEXT, earlier=st.lists(st.tuples(TEXT, TEXT), max_size=3))
@EXAMPLES
def test_a_conversation_renders_as_the_repl_renders_it_token_for_token(tiny_cache, question, instruction, earlier):
    """Earlier user and assistant messages, then the question: what the REPL renders with the
    conversation on (prompts.render_prompt with the history), token for token."""
    tokenizer = _tiny_tokenizer()
    template = chat_template.build(tokenizer)
    for system, asked_under in ((instruction, instruction), (None, DEFAULT_INSTRUCTION)):
        messages = chat_template.messages(question, system, earlier)
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
        assert text == tokenizer.bos_token + render_prompt(tokenizer, asked_under, question, earlier)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == prompt_ids(tokenizer, asked_under, question, earlier)


def test_the_template_refuses_conversations_lorachat_never_renders(tiny_cache):
    tokenizer = _tiny_tokenizer()
    template = chat_template.build(tokenizer)
    for messages in ([{"role": "system", "content": "s"}],
                     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                     [{"role": "user", "content": "a"}, {"role": "user", "content": "c"}],
                     [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]):
        with pytest.raises(Exception, match="user and assistant messages in turn"):  # jinja2's TemplateError, as vLLM reports it
            tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def test_a_model_with_its_own_template_renders_a_conversation_as_the_repl(tiny_cache, tmp_path):
    """Served with its own template, a model renders the same messages the REPL renders."""
    from lorachat.models.loader import load_files

    tokenizer, _, _ = load_files(str(llama_dir(tmp_path / "llama")))
    earlier = [("What is SOH?", "A hardmask."), ("And SiON?", "Silicon oxynitride.")]
    messages = chat_template.messages("And CMP?", "Answer briefly.", earlier)
    served = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert served == render_prompt(tokenizer, "Answer briefly.", "And CMP?", earlier)


@pytest.mark.parametrize("kind", ["tiny", "own template", "own template without a system role"])
@given(question=TEXT, instruction=TEXT)
@EXAMPLES
def test_a_client_sending_what_serve_prints_gets_lorachat_prompt(tiny_cache, tmp_path, kind, question, instruction):
    """The printed request, its placeholders filled in (stripped, as serve says), rendered by the chat
    template vLLM would use: lorachat's prompt ids for that adapter's instruction and the question."""
    question, instruction = question.strip(), instruction.strip()
    plan, tokenizer = _plan(tmp_path, kind)
    assert (plan.template is None) == (kind != "tiny")
    body = server.request(plan, Served("a", Path("/a"), 4, instruction, 64))
    messages = [dict(m, content=m["content"][:-len("QUESTION")] + question if m["role"] == "user" else m["content"])
                for m in body["messages"]]
    text = tokenizer.apply_chat_template(messages, chat_template=plan.template, tokenize=False, add_generation_prompt=True)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == prompt_ids(tokenizer, instruction, question)


def test_a_model_with_its_own_template_is_served_with_it(tiny_cache, tmp_path):
    model = llama_dir(tmp_path / "llama")
    plan = server.plan(server.ServeOptions(model=str(model), home=tmp_path / "home"))
    assert plan.template is None and plan.takes_system and plan.architecture == "LlamaForCausalLM"
    plan.served = [Served("a", Path("/a"), 4, DEFAULT_INSTRUCTION, 64)]
    assert "--chat-template" not in server.command(plan) and server.write_template(plan) is None
    assert not (tmp_path / "home").exists()


def test_the_vllm_command_runs_in_place_of_lorachat(workspace, tmp_path):
    """Without --dry-run lorachat becomes `vllm serve ...` (exec): a stand-in `vllm` records its argv."""
    fake = tmp_path / "vllm"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", RECORD=str(tmp_path / "argv"),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-m", "lorachat", "serve", "--model", "tiny", "--home", str(workspace)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = shlex.split(done.stdout.splitlines()[-1])
    assert (tmp_path / "argv").read_text().splitlines() == printed[1:]


def _tiny_tokenizer():
    return AutoTokenizer.from_pretrained(ensure_tiny())


def _plan(tmp_path, kind):
    if kind == "tiny":
        model = "tiny"
    else:
        template = LLAMA_TEMPLATE if kind == "own template" else NO_SYSTEM_TEMPLATE
        model = str(tmp_path / kind.replace(" ", "-"))
        if not Path(model).exists():
            llama_dir(Path(model), template)
    plan = server.plan(server.ServeOptions(model=model, home=tmp_path / "empty"))
    return plan, AutoTokenizer.from_pretrained(ensure_tiny() if kind == "tiny" else model)


def test_a_merge_with_a_plain_peft_adapter_is_served_under_the_one_instruction_both_are_asked_under(tiny_cache, tmp_path, capsys):
    session = tiny_session(tmp_path)
    save(session, "ours", 4, instruction=DEFAULT_INSTRUCTION)
    plain_peft(tmp_path / "adapters" / "theirs", target_modules=["fc1"])   # no lorachat.json: the default instruction
    merging.merge(session, ["ours", "theirs"], "both", merging.MergeOptions(method="cat"))
    assert json.loads((tmp_path / "adapters" / "both" / "lorachat.json").read_text())["instruction"] == DEFAULT_INSTRUCTION
    code, out, _ = run_serve(capsys, "--model", "tiny", "--home", str(tmp_path), "--dry-run")
    assert code == 0 and "several instructions" not in out, out
    asks = [json.loads(line) for line in out.splitlines() if line.startswith("  {")]
    assert {a["model"]: a["messages"][0]["content"] for a in asks} == dict.fromkeys(["both", "ours", "theirs"], DEFAULT_INSTRUCTION)
