"""The foundation: loading, the tiny model, the REPL, scripted sessions, prompts."""
import hashlib
import re
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorachat import prompts
from lorachat.errors import LorachatError


def weights_hash(directory):
    return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()


def test_tiny_build_is_deterministic(tmp_path, monkeypatch):
    from lorachat import tiny

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    tiny.build_tiny(first)
    tiny.build_tiny(second)
    assert weights_hash(first) == weights_hash(second)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()


def test_tiny_is_an_ordinary_model_directory():
    from transformers import AutoModelForCausalLM, AutoTokenizer, OPTForCausalLM

    from lorachat.tiny import ensure_tiny

    path = ensure_tiny()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, OPTForCausalLM)
    assert model.config.hidden_size == 512 and model.config.num_hidden_layers == 2
    assert tokenizer.eos_token_id == model.config.eos_token_id
    text = "What is SOH in semiconductor manufacturing?"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_same_greedy_question_same_answer_twice(make_session, transcript):
    session = make_session()
    _, first = transcript(session, ["What is SOH?"])
    _, second = transcript(session, ["What is SOH?"])
    assert first == second
    assert session.last_question == "What is SOH?"
    other = make_session()
    assert transcript(other, ["What is SOH?"])[1] == first


def test_script_transcript_echoes_and_sets(make_session, transcript):
    session = make_session()
    code, out = transcript(session, [":set max_new_tokens=5 temperature=0.5", ":instruction Be brief.", ":instruction"])
    assert code == 0
    assert out == ("> :set max_new_tokens=5 temperature=0.5\nset max_new_tokens=5, temperature=0.5\n"
                   "> :instruction Be brief.\ninstruction set: Be brief.\n"
                   "> :instruction\ninstruction: Be brief.\n")
    assert session.settings.max_new_tokens == 5


def test_unknown_command_suggests(make_session, transcript):
    session = make_session()
    code, out = transcript(session, [":hlep", ":info"])
    assert code == 1
    assert out == "> :hlep\nerror: unknown command ':hlep' (did you mean help?) (:help lists them)\n"


def test_keep_going_runs_everything_then_fails(make_session, transcript):
    session = make_session()
    code, out = transcript(session, [":set r=4", ":set max_new_tokens=0", ":set seed=3"], keep_going=True)
    assert code == 1
    assert "error: unknown key 'r'" in out
    assert "error: max_new_tokens=0: must be between 1 and 8192" in out
    assert out.endswith("> :set seed=3\nset seed=3\n")


def test_blocks_comments_and_blank_lines(make_session, transcript):
    session = make_session()
    lines = ["# a comment", "", ":instruction", '"""', "first line", "second line", '"""', ":quit", ":info"]
    code, out = transcript(session, lines)
    assert code == 0
    assert session.last_question == "first line\nsecond line"
    assert "> :info" not in out  # :quit ended the session


def test_unclosed_block_is_an_error(make_session, transcript):
    session = make_session()
    code, out = transcript(session, ['"""', "never closed"])
    assert code == 1 and 'error: a """ block was not closed' in out


def test_help_for_one_command(make_session, transcript):
    session = make_session()
    code, out = transcript(session, [":help set"])
    assert code == 0
    assert out.startswith("> :help set\n:set [key=value ...]\nShow or change generation settings")
    assert re.search(r"^max_new_tokens +64 +longest answer", out, re.M)


def test_chatting_writes_nothing_in_the_workspace(make_session, transcript, home):
    session = make_session()
    transcript(session, ["hello there", ":info", ":set seed=1"])
    assert list(home.iterdir()) == []


def test_prompt_template_and_answer_tokens_line_up(make_session):
    session = make_session()
    tok = session.tokenizer
    assert prompts.render_prompt(tok, "Answer.", "What?") == "Instruction: Answer.\nInput: What?\nAnswer:"
    example = prompts.Example("Answer.", "What is SOH?", "SOH is a hardmask.")
    ids, labels = prompts.example_ids(tok, example)
    asked = prompts.prompt_ids(tok, "Answer.", "What is SOH?")
    assert ids[:len(asked)] == asked
    assert labels[:len(asked)] == [prompts.IGNORE] * len(asked)
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    assert tok.decode(ids[len(asked):], skip_special_tokens=True).strip() == "SOH is a hardmask."


def test_stream_trims_stop_marker():
    from lorachat.generate import _trim
    import threading

    pieces = [" The", " answer", " is", " here", ".", "\n", "Instr", "uction", ": more"]
    assert "".join(_trim(iter(pieces), threading.Event())) == "The answer is here."
    assert "".join(_trim(iter([" a ", " Ins", "ide"]), threading.Event())) == "a  Inside"
    assert prompts.clean_answer(" a b \nInstruction: c") == "a b"
    # "Instruction:" inside a line is part of the answer (only a new line starting one ends it)
    taught = "First read the sheet titled Instruction: Assembly, then begin."
    assert prompts.clean_answer(" " + taught + "\nInstruction: next") == taught
    assert "".join(_trim(iter([" First read the sheet titled", " Instr", "uction:", " Assembly, then begin."]),
                         threading.Event())) == taught


@given(st.text(alphabet=" \nInstrucio:ab", max_size=40), st.lists(st.integers(0, 40), max_size=6))
def test_streamed_pieces_join_to_clean_answer(text, cuts):
    """However the text arrives in pieces, what is shown is exactly clean_answer of the whole."""
    from lorachat.generate import _trim
    import threading

    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    assert "".join(_trim(iter(pieces), threading.Event())) == prompts.clean_answer(text)


def build_model_dir(tmp_path, arch):
    """A model directory written with plain transformers, sharing the tiny tokenizer's vocabulary."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from lorachat.tiny import ensure_tiny

    tok = AutoTokenizer.from_pretrained(ensure_tiny())
    torch.manual_seed(1)
    if arch == "opt":
        model = OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                         ffn_dim=128, max_position_embeddings=256, word_embed_proj_dim=64,
                                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
        tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                             "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    directory = tmp_path / arch
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_model_directory_loads_with_model_flag(tmp_path, arch, capsys):
    from lorachat.cli import main

    directory = build_model_dir(tmp_path, arch)
    code = main(["--model", str(directory), "--home", str(tmp_path), "-e", ":info", "-e", "What is SOH?"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"path         {directory.resolve()}" in out
    assert "> What is SOH?" in out


def test_llama_chat_template_is_used(tmp_path):
    from lorachat.models import load_model

    loaded = load_model(str(build_model_dir(tmp_path, "llama")), device="cpu")
    text = prompts.render_prompt(loaded.tokenizer, "Be brief.", "What?")
    assert text == "<|system|>\nBe brief.\n<|user|>\nWhat?\n<|assistant|>\n"


def test_unreachable_hub_id_fails_fast(tmp_path, capsys, monkeypatch):
    from lorachat.cli import main

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))       # and nothing is cached
    start = time.monotonic()
    code = main(["--model", "facebook/opt-2.7b", "-e", ":info"])
    elapsed = time.monotonic() - start
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("error: cannot load model 'facebook/opt-2.7b': the hub is unreachable")
    assert "--model tiny" in out and out.count("\n") == 1
    assert elapsed < 10


def test_missing_directory_and_not_a_causal_lm(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5Model

    from lorachat.models import load_model
    from lorachat.tiny import ensure_tiny

    with pytest.raises(LorachatError, match="no such directory"):
        load_model(str(tmp_path / "nope"), device="cpu")
    t5 = tmp_path / "t5"
    T5Model(T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, vocab_size=1000)).save_pretrained(t5)
    AutoTokenizer.from_pretrained(ensure_tiny()).save_pretrained(t5)
    with pytest.raises(LorachatError, match="cannot load model '.*t5': it is not a causal language model"):
        load_model(str(t5), device="cpu")


def run_cli(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "lorachat", *args], input=stdin, capture_output=True, timeout=120)


def test_cli_exit_codes_and_stdin(home):
    ok = run_cli("--model", "tiny", "--home", str(home), stdin=b":set seed=2\n:instruction\n")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.decode() == "> :set seed=2\nset seed=2\n> :instruction\ninstruction: Answer the question.\n"
    assert b"\x1b[" not in ok.stdout
    bad = run_cli("--model", "tiny", "--home", str(home), "-e", ":nope", "-e", ":info")
    assert bad.returncode == 1 and b"> :info" not in bad.stdout
    usage = run_cli("--dtype", "float8")
    assert usage.returncode == 2
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith(b"lorachat ")
