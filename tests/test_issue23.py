"""Issue 23: defects found on OPT, Llama and GPT-2 shapes, in adapters made elsewhere, under
torchrun and at a closed pipe; one test (or a few) per defect, each failing before its fix."""
import json
import re

import pytest
import torch

from lorachat import adapters

QUESTION = "What is SOH?"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def model_dir(tmp_path, arch: str):
    """A small model directory (hidden 64, 2 layers) written with plain transformers, with the tiny
    tokenizer's vocabulary: OPT, Llama (with a chat template) or GPT-2."""
    from transformers import (AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig,
                              OPTForCausalLM)

    from lorachat.tiny import ensure_tiny

    tok = AutoTokenizer.from_pretrained(ensure_tiny())
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    if arch == "opt":
        model = OPTForCausalLM(OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, ffn_dim=256,
                                         max_position_embeddings=256, word_embed_proj_dim=64, **ids))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=2, max_position_embeddings=256, **ids))
        tok.chat_template = TEMPLATE
    else:
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=256, **ids))
    directory = tmp_path / arch
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


# 1 -----------------------------------------------------------------------------------------------

def test_compare_on_opt_fc1_answers_one_at_a_time_and_the_session_goes_on(make_session, transcript):
    """OPT flattens (batch, seq) before fc1: PEFT's mixed batch cannot work there."""
    from test_adapters import shelve

    session = make_session()
    shelve(session, ["a", "b"], targets=("fc1",))
    transcript(session, [":set max_new_tokens=12"])
    code, out = transcript(session, [f":compare a b -- {QUESTION}"])
    assert code == 0, out
    blocks = out.split("\n")[1:-1]
    assert blocks[0::2] == ["[base]", "[a]", "[b]"]
    assert session.active_adapter is None
    for name, answer in zip(["base", "a", "b"], blocks[1::2]):
        assert transcript(session, [f":use {name}", QUESTION])[1].splitlines()[-1] == answer


def test_a_failed_mixed_batch_leaves_no_hook_behind(make_session):
    """PEFT removes its adapter_names hooks only after a forward that succeeded."""
    from test_adapters import shelve

    session = make_session()
    shelve(session, ["a"], targets=("fc1",))
    adapters.use(session, "a")
    current = adapters.switch(session)
    before = {layer: len(layer._forward_pre_hooks) for layer in current.layers}
    ids = torch.tensor([[2, 50, 60, 70]] * 2)
    with pytest.raises(ValueError, match="adapter_names"):
        with current.unmerged(enabled=True), torch.inference_mode():
            session.model.generate(input_ids=ids, adapter_names=["a", "__base__"], max_new_tokens=2)
    assert {layer: len(layer._forward_pre_hooks) for layer in current.layers} == before
    with torch.inference_mode():
        session.model.generate(input_ids=ids[:1], max_new_tokens=2)  # no leftover hook refuses it


# 2 -----------------------------------------------------------------------------------------------

def plain_peft(directory, seed, **config):
    """An adapter made with plain PEFT on the tiny model (non-zero weights; a modules_to_save copy
    made different from the base's), no lorachat.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorachat.tiny import ensure_tiny

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(ensure_tiny()),
                           LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                         "init_lora_weights": False, **config}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".modules_to_save." in name:
                param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(directory)


def peft_logits(directory=None):
    """Logits of PEFT's own load of `directory` on a fresh base (None: the base alone)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorachat.tiny import ensure_tiny

    model = AutoModelForCausalLM.from_pretrained(ensure_tiny())
    if directory is not None:
        model = PeftModel.from_pretrained(model, directory)
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([[2, 50, 60, 70, 80, 90]])).logits


@pytest.mark.parametrize("order", [("plain", "mts"), ("mts", "plain")])
def test_a_modules_to_save_adapter_loads_beside_another_and_the_base_stays_the_base(make_session, transcript, home, order):
    from test_adapters import logits

    plain_peft(home / "adapters" / "plain", 1)
    plain_peft(home / "adapters" / "mts", 2, modules_to_save=["lm_head"])
    session = make_session()
    expected = {name: peft_logits(home / "adapters" / name) for name in order}
    for name in [*order, *order]:
        code, out = transcript(session, [f":use {name}"])
        assert code == 0 and "Traceback" not in out, out
        assert torch.allclose(logits(session), expected[name], atol=1e-5), name
    transcript(session, [":use base"])
    assert torch.equal(logits(session), peft_logits())
    out = transcript(session, [":set max_loaded=1", ":use mts", ":use base", ":delete plain yes", ":delete mts yes", ":adapters"])[1]
    assert "no adapters yet" in out
    assert torch.equal(logits(session), peft_logits())  # unloading put the base's own lm_head back


# 3 -----------------------------------------------------------------------------------------------

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


# 4 -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_rank_leaves_one_line_on_the_other_and_no_traceback_of_lorachat(home):
    import os
    import signal
    import subprocess

    from terminal import read_until
    from test_distributed import children, environment, train_command
    from test_train import write_dataset

    write_dataset(home, "films", [("Who directed Alien?", "Ridley Scott."), ("Who directed Heat?", "Michael Mann.")])
    launcher = subprocess.Popen(train_command(home, "--name", "never", "until=steps", "steps=100000", "batch=1", ranks=2),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment())
    try:
        seen = read_until(launcher.stdout.fileno(), b"training never", 180)
        os.kill(max(children(launcher.pid)), signal.SIGKILL)
        out = seen.decode() + launcher.communicate(timeout=120)[0].decode()
    finally:
        launcher.kill()
    assert launcher.returncode == 1, out
    assert "[rank" not in out and "lorachat/" not in out, out   # torchrun's own report of the dead child stays
    assert len(re.findall(r"error: a peer died: another process of this run is gone, so rank [01] stops too$", out, re.M)) == 1, out
    assert not (home / "adapters").exists() or not [p for p in (home / "adapters").iterdir() if not p.name.startswith(".")]


# 5 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ctrl_c", [True, False])
def test_a_closed_stdout_ends_the_session_quietly(home, ctrl_c):
    """`lorachat | tee log`, then Ctrl-C: the terminal's Ctrl-C ends tee too, mid-answer."""
    import os
    import signal
    import subprocess

    from terminal import read_some, read_until, spawn_repl

    proc, main = spawn_repl(home, stdout=subprocess.PIPE)  # the prompt and tracebacks go to the terminal
    try:
        os.write(main, b":set max_new_tokens=8192 repetition_penalty=1.3\r")
        read_until(proc.stdout.fileno(), b"repetition_penalty=1.3\n", 30)
        os.write(main, b"Tell me a very long story about wafers.\r")  # runs to the model's 512 positions
        read_until(proc.stdout.fileno(), b"wafers.\n", 30)
        read_some(proc.stdout.fileno(), 30)  # the answer is streaming
        proc.stdout.close()  # tee is gone
        if ctrl_c:
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
        terminal = b""
        try:
            while True:
                terminal += read_some(main, 1)
        except (AssertionError, OSError):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    assert code in (0, 141), terminal
    assert b"Traceback" not in terminal and b"Error" not in terminal and b"Exception" not in terminal, terminal


# 6 -----------------------------------------------------------------------------------------------

def test_merge_refuses_a_dora_source_as_export_does(make_session, transcript, home):
    from test_adapters import shelve

    session = make_session()
    shelve(session, ["a"])
    plain_peft(home / "adapters" / "dora", 1, use_dora=True)
    code, out = transcript(session, [":merge a dora as both", ":export dora out"], keep_going=True)
    assert ("error: adapter 'dora' is not plain LoRA (DoRA or another variant): :merge sums plain LoRA deltas only"
            in out.splitlines()), out
    assert "error: adapter 'dora' is not plain LoRA (DoRA or another variant): export merges plain LoRA only" in out
    assert sorted(p.name for p in (home / "adapters").iterdir()) == ["a", "dora"]
    assert "both" not in adapters.loaded_names(session)


# 7 -----------------------------------------------------------------------------------------------

def test_import_of_a_source_without_rows_says_no_examples(make_session, transcript, tmp_path):
    session = make_session()
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "header.csv").write_text("instruction,output\n")
    code, out = transcript(session, [f":import {tmp_path / 'empty.json'}", f":import {tmp_path / 'header.csv'}"], keep_going=True)
    assert out.splitlines()[1::2] == [f"error: no examples in {tmp_path / 'empty.json'}",
                                      f"error: no examples in {tmp_path / 'header.csv'}"], out


# 8 -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("words, message", [
    (["r=abc"], "r='abc': expected a whole number"),
    (["r"], "expected key=value, not 'r'"),
    (["rank=8"], "unknown key 'rank'"),
    (["a-b=1"], "expected key=value, not 'a-b=1'"),
    (["targets=q proj"], "targets='q proj': give a comma list"),
    (["--name", "../evil"], "invalid adapter name"),
    (["--name", "v1.2"], "cannot contain '.'"),
    (["--dataset", "../x"], "invalid dataset name"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_lorachat_train_usage_errors_exit_2_before_the_model_loads(home, capsys, words, message):
    from lorachat import cli

    dataset = [] if "--dataset" in words else ["--dataset", "films"]
    with pytest.raises(SystemExit) as usage:  # a model that cannot load: it is never tried
        cli.main(["train", "--model", str(home / "no-model"), "--home", str(home), *dataset, *words])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_lorachat_train_workspace_errors_exit_1_naming_what_is_missing(home, capsys):
    from lorachat import cli
    from test_train import write_dataset

    def run(*words):
        code = cli.main(["train", "--model", str(home / "no-model"), *words])
        return code, capsys.readouterr().out

    assert run("--home", str(home / "nowhere"), "--dataset", "films") == (
        1, f"error: no such folder: {home / 'nowhere'} (the workspace holding datasets/ and adapters/)\n")
    code, out = run("--home", str(home), "--dataset", "films")
    assert code == 1 and out == (f"error: no dataset 'films': {home / 'datasets' / 'films.jsonl'} does not exist (write one "
                                 "JSON object per line there, or :import a file into it in the REPL)\n")
    write_dataset(home, "films", [("Who directed Alien?", "Ridley Scott.")])
    (home / "adapters" / "taken").mkdir(parents=True)
    code, out = run("--home", str(home), "--dataset", "films", "--name", "taken")
    assert code == 1 and out == f"error: an adapter named 'taken' already exists: {home / 'adapters' / 'taken'}\n"
    code, out = run("--home", str(home), "--dataset", "films")   # now only the model is missing
    assert code == 1 and "no-model" in out


# 9 -----------------------------------------------------------------------------------------------

def test_gpt2_adapters_are_made_for_conv1d_without_a_warning(make_session, transcript, home, tmp_path, recwarn):
    session = make_session(model=str(model_dir(tmp_path, "gpt2")))
    keys = "steps=2 until=steps probes=0 anchors=0"
    code, out = transcript(session, [f":add {QUESTION} => A hardmask.", f":train a {keys}", f":train b {keys}",
                                     f":train head targets=lm_head {keys}", ":use a", QUESTION])
    assert code == 0, out
    for name in ("a", "b"):
        assert json.loads((home / "adapters" / name / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    assert json.loads((home / "adapters" / "head" / "adapter_config.json").read_text())["fan_in_fan_out"] is False
    assert [str(w.message) for w in recwarn if "peft" in w.filename] == []


def test_the_command_line_shows_no_library_warning_unless_asked(home, tmp_path):
    import subprocess
    import sys

    from test_distributed import environment

    directory = model_dir(tmp_path, "gpt2")
    lines = [f":add {QUESTION} => A hardmask.", ":train a steps=1 until=steps probes=0 anchors=0 targets=lm_head", QUESTION]
    command = [sys.executable, "-m", "lorachat", "--model", str(directory), "--home", str(home), *(a for l in lines for a in ("-e", l))]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warn" not in (run.stdout + run.stderr).lower(), run.stderr


# 10 ----------------------------------------------------------------------------------------------

def test_serve_refuses_adapters_on_an_architecture_vllm_serves_without_lora(make_session, home, tmp_path, capsys):
    import dataclasses

    from lorachat import cli, saving, shape, train

    directory = model_dir(tmp_path, "gpt2")
    session = make_session(model=str(directory))
    adapters.add_new(session, "notes", shape.lora_config(session.model, dataclasses.replace(train.DEFAULTS, r=8)))
    saving.save(session, "notes", {})
    cli.main(["serve", "--model", str(directory), "--home", str(home), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert ("refused 'notes': vLLM's GPT2LMHeadModel does not support LoRA (vllm/model_executor/models/gpt2.py does not "
            "implement SupportsLoRA); `:export notes DIR` writes a merged model vLLM can serve") in lines, lines
    assert not any(line.startswith(("serve '", "note: vLLM's LoRA support")) for line in lines), lines


# smaller ones ------------------------------------------------------------------------------------

def test_lorachat_train_stopped_by_sigterm_says_so(home):
    import os
    import signal
    import subprocess

    from terminal import read_until
    from test_distributed import environment, train_command
    from test_train import write_dataset

    write_dataset(home, "films", [("Who directed Alien?", "Ridley Scott.")])
    proc = subprocess.Popen(train_command(home, "--name", "never", "until=steps", "steps=100000", "probes=0"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment())
    try:
        seen = read_until(proc.stdout.fileno(), b"training never", 120)
        os.kill(proc.pid, signal.SIGTERM)
        out = seen.decode() + proc.communicate(timeout=60)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert re.search(r"error: training never stopped \(SIGTERM\) after \d+ steps: discarded$", out, re.M), out


def test_under_torchrun_a_usage_error_is_said_once(home):
    import subprocess

    from test_distributed import environment, train_command

    run = subprocess.run(train_command(home, "r=abc", ranks=2), capture_output=True, text=True, timeout=300, env=environment())
    assert run.returncode != 0
    assert (run.stdout + run.stderr).count("r='abc': expected a whole number") == 1, run.stdout + run.stderr


def test_plain_help_is_one_short_line_per_command_and_each_summary_a_sentence(make_session, transcript):
    from lorachat.commands import COMMANDS

    session = make_session()
    out = transcript(session, [":help"])[1].splitlines()
    for entry in {e.name: e for e in COMMANDS.values()}.values():
        assert entry.summary.endswith("."), entry.name   # the docstring's first line is a whole sentence
        line = next(line for line in out if line.endswith(entry.summary))
        assert len(line) <= 26 + len(entry.summary), line


@pytest.mark.parametrize("arch, target", [("opt", "fc1"), ("llama", "up_proj"), ("gpt2", "c_fc")])
def test_help_train_shows_the_targets_the_loaded_model_would_use(make_session, transcript, tmp_path, arch, target):
    session = make_session(model=str(model_dir(tmp_path, arch)))
    out = transcript(session, [":help train"])[1]
    assert re.search(rf"^targets +{target} ", out, re.M), out


def test_examples_show_the_question_as_asked_and_invalid_lines_are_said_once(make_session, transcript, home):
    (home / "datasets").mkdir()
    (home / "datasets" / "d.jsonl").write_text('{"instruction": "hi", "input": "", "output": "Hello!"}\nnot json\n'
                                               '{"instruction": "Answer.", "input": "Q?", "output": "A."}\n')
    session = make_session()
    code, out = transcript(session, [":dataset d", ":eval probes=d builtin=0", ":examples"])
    assert code == 0, out
    assert "1. [Answer the question.] hi => Hello!\n2. [Answer.] Q? => A.\n" in out
    before_examples = out.split("> :examples")[0]
    assert before_examples.count("invalid line") == 1, out   # :dataset said it; :eval read it twice
    assert out.split("> :examples")[1].count("invalid line") == 1   # :examples shows it whenever asked


def test_eval_shows_progress_while_the_base_answers_the_probes(make_session, transcript, home):
    from test_train import write_dataset

    write_dataset(home, "default", [("Who directed Alien?", "Ridley Scott.")])
    session = make_session()
    session.ui.progress_every = 0   # a plain line for every update
    code, out = transcript(session, [":eval builtin=12"])
    assert code == 0, out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("evaluating on default"))
    assert "answering 12 probe questions with the base 12/12" in lines[:first], out


def test_good_does_not_record_a_duplicate_and_says_so(make_session, transcript, home):
    session = make_session()
    transcript(session, [":set max_new_tokens=4", QUESTION])
    code, out = transcript(session, [":good", ":good", ":examples"])
    assert code == 0, out
    assert out.splitlines()[3] == "already in default as example 1: nothing added", out
    assert "dataset default: 1 example\n" in out


def test_adapter_names_say_what_is_allowed_and_unusable_folders_say_why(shelved, transcript, home):
    import shutil

    shutil.copytree(home / "adapters" / "a", home / "adapters" / "sp ace")
    shutil.copytree(home / "adapters" / "a", home / "adapters" / "v1.2")
    code, out = transcript(shelved, [":rename a ../evil", ":adapters"], keep_going=True)
    assert "error: invalid adapter name '../evil': use letters, digits, '_' and '-'\n" in out
    assert "note: adapters/sp ace cannot be used (invalid adapter name 'sp ace': use letters, digits, '_' and '-'): rename its folder" in out
    assert "note: adapters/v1.2 cannot be used (adapter name 'v1.2' cannot contain '.'" in out


def test_info_counts_the_base_and_the_loaded_adapters_apart(shelved, transcript):
    def parameters(out):
        return re.search(r"^parameters +(.*)$", out, re.M).group(1)

    before = parameters(transcript(shelved, [":info"])[1])
    after = parameters(transcript(shelved, [":use a", ":use b", ":info"])[1])
    assert re.fullmatch(r"[\d,]+", before) and after.startswith(before + " + ") and after.endswith(" in 2 loaded adapters")


def test_serve_serves_the_base_alone_and_states_the_positions(home, capsys):
    from lorachat import cli
    from lorachat.tiny import ensure_tiny

    assert cli.main(["serve", "--model", "tiny", "--home", str(home), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    base = str(ensure_tiny().resolve())
    assert f"no adapter to serve: the base model alone, as {base!r}" in lines
    assert json.loads(next(line for line in lines if line.startswith("  {")))["model"] == base
    assert ("  (prompt + answer <= 512 tokens, the model's positions: for a prompt of more than 512 - max_tokens tokens "
            "send max_tokens = 512 - its tokens, as the REPL shortens its answer; vLLM refuses a request past them)") in lines
    assert lines[-1].startswith(f"vllm serve {base} --generation-config vllm --chat-template ") and "lora" not in lines[-1]


# the whole surface -------------------------------------------------------------------------------

SURFACE = """\
:instruction Answer the question.
:add What is SOH? => Spin on hardmask.
:add What is SiON? => Silicon oxynitride.
What is SOH?
:good
:undo
What is CMP?
:fix Chemical mechanical polishing.
:examples
:drop 3
:examples all
:datasets
:train a steps=30
:train b steps=30
:use a
What is SOH?
:use base
:compare a b -- What is SiON?
:eval builtin=20
:scale a 0.5
:merge a b as m-cat
:merge a b as m-linear method=linear
:merge a b as m-svd method=svd
:merge a b as m-ties method=ties density=0.5
:merge a b as m-dl method=dare_linear density=0.5
:merge a b as m-dt method=dare_ties density=0.5
:merge a b as m-mp method=magnitude_prune density=0.5
:adapters
:rename m-cat both
:delete m-svd yes
:export a {export}
:info
:set max_new_tokens=16
:help train
:help merge
What is SOH?
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_every_command_runs_on_opt_llama_and_gpt2_without_a_traceback_or_a_library_warning(home, tmp_path, arch):
    """The default keys (steps capped) on three small architectures, as a user runs a script: no
    traceback, no library warning, :compare gives every answer, and a question still answers at the end."""
    import subprocess
    import sys

    from test_distributed import environment

    directory = model_dir(tmp_path, arch)
    script = tmp_path / "surface.txt"
    script.write_text(SURFACE.format(export=tmp_path / "exported"))
    run = subprocess.run([sys.executable, "-m", "lorachat", "--model", str(directory), "--home", str(home), "--script", str(script)],
                         capture_output=True, text=True, timeout=900, env=environment())
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "Traceback" not in out and "warn" not in out.lower(), out
    compared = out.split("> :compare a b -- What is SiON?\n")[1].split("> :eval")[0].splitlines()
    assert compared[0::2] == ["[base]", "[a]", "[b]"], out
    last = run.stdout.rsplit("> What is SOH?\n", 1)[1]   # the script's last line: its answer, and nothing after it
    assert last.count("\n") == 1 and not last.startswith("error:"), out
    assert (tmp_path / "exported" / "config.json").is_file()
    assert sorted(p.name for p in (home / "adapters").iterdir()) == ["a", "b", "both", "m-dl", "m-dt", "m-linear", "m-mp", "m-ties"]
