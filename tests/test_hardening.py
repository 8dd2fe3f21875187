"""Issue 16: defects found by trying every README promise as a new user would; one test (or a few)
per defect, each failing before its fix."""
import re

import pytest

from lorachat import commands
from lorachat.commands import COMMANDS


# 1 -----------------------------------------------------------------------------------------------

def test_help_of_a_bare_colon_is_one_line(make_session, transcript):
    session = make_session()
    code, out = transcript(session, [":help :", ":help ::", ":help :: train", ":help :set"], keep_going=True)
    assert code == 1 and "Traceback" not in out
    assert out.count("error: :help takes one command name") == 2
    assert "> :help :: train\n:train [NAME] [key=value ...]\n" in out
    assert "> :help :set\n:set [key=value ...]\n" in out


@pytest.fixture
def buggy_command():
    def boom(session, args):
        raise ValueError("a bug")
    commands.command("boom")(boom)
    yield
    del COMMANDS["boom"]


def test_a_bug_on_a_terminal_shows_its_traceback_and_the_session_goes_on(make_session, buggy_command, capsys):
    from lorachat.repl import Repl

    session = make_session()
    session.settings.max_new_tokens = 7
    repl = Repl(session)
    repl.respond(":boom")
    repl.respond(":set")
    assert "ValueError: a bug" in capsys.readouterr().err
    out = session.out.getvalue()
    assert "error: that was a bug in lorachat (traceback above); the session goes on" in out
    assert re.search(r"^max_new_tokens +7 ", out, re.M)


# 13 ----------------------------------------------------------------------------------------------



def test_max_loaded_1_keeps_one_adapter_loaded(shelved, transcript):
    from lorachat import adapters

    session = shelved
    transcript(session, [":use a", ":use b", ":set max_loaded=1"])
    assert adapters.loaded_names(session) == ["b"]
    transcript(session, [":set max_loaded=3", ":use a", ":use c", ":set max_loaded=1"])
    assert adapters.loaded_names(session) == ["c"] and session.active_adapter == "c"
    transcript(session, [":use a"])
    assert adapters.loaded_names(session) == ["a"]
    transcript(session, [":add q => a", ":train t steps=1 until=steps"])
    assert adapters.loaded_names(session) == ["t"] and session.active_adapter == "t"


# 14 ----------------------------------------------------------------------------------------------

def test_scale_of_an_unknown_adapter_and_quit_with_words_are_errors(shelved, transcript):
    session = shelved
    code, out = transcript(session, [":scale nosuch", ":scale nosuch 0.5", ":scale aa", ":quit now", ":scale a"], keep_going=True)
    assert code == 1
    assert out.splitlines()[1] == "error: no adapter named 'nosuch' (have: a, b, c)"
    assert out.splitlines()[3].startswith("error: no adapter named 'nosuch'")
    assert out.splitlines()[5] == "error: no adapter named 'aa' (did you mean a?) (have: a, b, c)"
    assert out.splitlines()[7] == "error: :quit takes no arguments (got 'now')"
    assert out.endswith("> :scale a\na: scale 1\n")  # the session did not end at ':quit now'


def test_add_splits_at_the_first_spaced_arrow_and_says_what_it_stored(make_session, transcript, home):
    from lorachat import datasets

    session = make_session()
    code, out = transcript(session, [":add What is 2=>3? => Nothing => at all.", ":add a=>b", ":help add"], keep_going=True)
    assert code == 1
    assert "added to default (1 example): What is 2=>3? => Nothing => at all.\n" in out
    assert "error: write :add QUESTION => ANSWER (with a space on each side of '=>')" in out
    assert "stores the question 'What is 2=>3?'" in out
    [stored] = datasets.load_dataset(home, "default").examples
    assert (stored.input, stored.output) == ("What is 2=>3?", "Nothing => at all.")


def test_add_of_an_example_longer_than_the_model_warns_and_keeps_it(make_session, transcript, home):
    from lorachat import datasets

    session = make_session()
    long_answer = " ".join(f"word{n}" for n in range(400))
    code, out = transcript(session, [":add short => fine", f":add long => {long_answer}"])
    assert code == 0
    warning = out.splitlines()[-1]
    assert warning.startswith("warning: this example is ") and "more than the model's 512 positions" in warning
    assert warning.endswith(":drop 2") and out.count("warning") == 1
    assert datasets.load_dataset(home, "default").examples[-1].output == long_answer


# 11 ----------------------------------------------------------------------------------------------

def test_a_script_file_with_a_byte_order_mark_and_crlf_runs_its_commands(home, tmp_path, capsys):
    from lorachat import cli, datasets

    script = tmp_path / "windows.txt"
    script.write_bytes("\ufeff:add What is SOH? => A hardmask.\r\n:examples\r\n\"\"\"\r\n:add x\r\n\"\"\"\r\n".encode("utf-8"))
    assert cli.main(["--model", "tiny", "--home", str(home), "--script", str(script), "--keep-going"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("> :add What is SOH? => A hardmask.\nadded to default (1 example)")
    assert "\r" not in out and "\ufeff" not in out and "error: write :add QUESTION => ANSWER" in out
    assert [e.output for e in datasets.load_dataset(home, "default").examples] == ["A hardmask."]


def test_lines_from_anywhere_lose_a_leading_byte_order_mark(make_session, transcript):
    session = make_session()
    code, out = transcript(session, ["\ufeff:set seed=3\r\n", ":instruction\r\n"])
    assert code == 0 and out == "> :set seed=3\nset seed=3\n> :instruction\ninstruction: Answer the question.\n"


# 7, 12 ------------------------------------------------------------------------------------------

def test_piped_output_and_an_unwritable_history_keep_an_interactive_session_plain(home, tmp_path, tiny_cache):
    """`lorachat --model tiny | tee log` with a history file that cannot be written: the mode follows
    stdin (a terminal), the output stays plain, and history falls back to memory with one note."""
    import os
    import subprocess

    from terminal import read_until, spawn_repl

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny-v1").symlink_to(tiny_cache / "tiny-v1")
    (cache / "history").mkdir()  # unwritable as a file, even for root
    proc, main = spawn_repl(home, stdout=subprocess.PIPE, LORACHAT_CACHE=str(cache))  # prompt drawn on stderr
    try:
        terminal = b""
        for line in (b":nosuch\r", b":set seed=4\r"):
            os.write(main, line)
            terminal += read_until(main, b"default>", 30)  # a failing line does not end the session
        os.write(main, b"\x04")
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    assert proc.returncode == 0
    assert b"Traceback" not in terminal and b"Press ENTER" not in terminal
    assert b"\x1b" not in out
    assert out.count(b"input history is kept in memory only for this session: cannot write") == 1
    assert b"> :nosuch\nerror: unknown command ':nosuch'" in out and b"> :set seed=4\nset seed=4\n" in out


# 8 -----------------------------------------------------------------------------------------------

LONG = [":set max_new_tokens=8192 repetition_penalty=1.3", "Tell me a very long story about wafers."]  # runs to the model's 512 positions


def test_ctrl_c_during_an_answer_in_a_script_fails_that_line_and_the_script_goes_on(make_session, transcript):
    import os
    import signal
    import threading
    import time

    session = make_session()
    marker = f"> {LONG[1]}\n"

    def interrupt_once_streaming():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = session.out.getvalue()
            if marker in out and out.split(marker, 1)[1].strip():  # the answer is visibly under way
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=interrupt_once_streaming)
    watcher.start()
    try:
        code, out = transcript(session, [*LONG, ":set seed=5"], keep_going=True)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the script")
    finally:
        watcher.join()
    assert code == 1
    answer, rest = out.split(marker, 1)[1].split("\n", 1)
    assert answer and rest == "error: the answer stopped by Ctrl-C\n> :set seed=5\nset seed=5\n"
    assert session.last_answer_complete is False


# 6 -----------------------------------------------------------------------------------------------

@pytest.fixture
def umask_002():
    import os

    old = os.umask(0o002)
    yield
    os.umask(old)


def test_what_lorachat_creates_gets_the_modes_of_a_plain_mkdir_and_open(shelved, transcript, home, tmp_path, umask_002):
    import os
    import stat

    session = shelved   # adapters a, b, c saved under umask 022
    transcript(session, [":use a", ":merge a b as ab", f":export ab {tmp_path / 'out' / 'model'}",
                         ":add q => a", ":add r => b", ":drop 1"])
    made = [home / "adapters" / "ab", tmp_path / "out", tmp_path / "out" / "model", home / "datasets"]
    made += [p for folder in made[:3:2] for p in folder.iterdir()] + [home / "datasets" / "default.jsonl"]
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(os.stat(p).st_mode)) for p in made}
    want = {name: "0o775" if os.path.isdir(tmp_path / name) else "0o664" for name in modes}
    assert modes == want and "home/adapters/ab/adapter_model.safetensors" in modes
    assert "out/model/model.safetensors" in modes


# 15 ----------------------------------------------------------------------------------------------

def test_adapters_at_80_columns_shows_whole_names_and_short_targets(make_session, transcript):
    import io

    from peft import LoraConfig
    from rich.console import Console

    from lorachat import adapters, saving
    from lorachat.ui import RichUI

    session = make_session()
    long_name = "an_adapter_with_a_rather_long_name_x"
    made = {"m_cat": ["q_proj", "v_proj"], "m_cat_w": "all-linear", long_name: ["q_proj"]}
    for name, targets in made.items():
        adapters.add_new(session, name, LoraConfig(r=4, target_modules=targets))
        saving.save(session, name, {"train": {"targets": targets if isinstance(targets, str) else ",".join(targets)}})
    plain = transcript(session, [":adapters"])[1]
    assert "all-linear" in plain and "q_proj,v_proj" in plain and "model.decoder" not in plain
    console = Console(file=io.StringIO(), width=80)
    session.ui = RichUI(console)
    transcript(session, [":adapters"])
    out = console.file.getvalue()
    names = [line.split("│")[2].strip() for line in out.splitlines() if line.startswith("│")]
    assert names == sorted(made) and all(len(line) <= 80 for line in out.splitlines())
    assert "(not shown at this width: alpha, base model, dataset, created, loss, size)" in out


def test_export_says_a_live_scale_was_merged_in_and_named_adapters_have_peft_readme(shelved, transcript, home, tmp_path):
    session = shelved
    assert (home / "adapters" / "a" / "README.md").is_file()  # PEFT's model card, nested names too
    code, out = transcript(session, [":scale a 0.5", f":export a {tmp_path / 'half'}", ":scale a 1", f":export a {tmp_path / 'full'}"])
    assert code == 0
    assert out.count("merged in at its live scale") == 1
    assert "> :export a " + str(tmp_path / "half") + "\n'a' is merged in at its live scale 0.5, not as trained (:scale a 1 first for that)\n" in out


# 2 -----------------------------------------------------------------------------------------------

def state(session):
    from lorachat import adapters
    from test_adapters import logits

    return session.active_adapter, adapters.loaded_names(session), dict(adapters.shelf(session).scales), logits(session)


def same(one, other) -> bool:
    import torch

    return one[:3] == other[:3] and torch.equal(one[3], other[3])


def test_a_refused_rename_or_delete_leaves_the_session_as_it_was(shelved, transcript, home, monkeypatch):
    import os

    session = shelved
    transcript(session, [":use a", ":scale a 0.5"])
    before, files = state(session), sorted(p.name for p in (home / "adapters").iterdir())

    def refuse(source, target):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", refuse)   # as in a read-only workspace (root ignores chmod)
        code, out = transcript(session, [":rename a a2", ":delete a yes"], keep_going=True)
    assert code == 1 and out.count("Permission denied") == 2
    assert same(state(session), before) and sorted(p.name for p in (home / "adapters").iterdir()) == files


def test_a_rename_whose_metadata_cannot_be_written_is_undone(shelved, transcript, home, small_file_limit):
    import resource

    session = shelved
    transcript(session, [":use a"])
    before = state(session)
    small_file_limit(100)  # lorachat.json cannot be rewritten under the new name
    code, out = transcript(session, [":rename a a2"])
    small_file_limit(resource.RLIM_INFINITY)
    assert code == 1 and "error: could not update" in out
    assert same(state(session), before) and (home / "adapters" / "a" / "lorachat.json").is_file()
    assert not (home / "adapters" / "a2").exists()


# 3 -----------------------------------------------------------------------------------------------

def test_undo_removes_only_the_line_this_session_wrote(make_session, transcript, home):
    from lorachat import datasets
    from lorachat.prompts import Example

    soh = Example("Answer the question.", "What is SOH?", "A hardmask.")
    datasets.append_example(home, "default", soh)                 # another session's line
    datasets.append_example(home, "default", Example(text="x"))
    session = make_session()
    code, out = transcript(session, [":add What is SOH? => A hardmask.", ":drop 3", ":undo"], keep_going=True)
    assert out.endswith("> :undo\nerror: that example is no longer in default (was it dropped or edited?)\n")
    assert datasets.load_dataset(home, "default").examples == [soh, Example(text="x")]

    code, out = transcript(session, [":add a => 1", ":add b => 2", ":drop 3", ":undo"])   # its own :drop moves the mark
    assert code == 0 and out.endswith("> :undo\nremoved from default (2 examples left): b => 2\n")

    transcript(session, [":add c => 3"])
    datasets.remove_example(home, "default", 2)   # another session rewrites the file: equal lines are indistinguishable
    code, out = transcript(session, [":undo", ":undo"], keep_going=True)
    assert out.splitlines()[1].startswith("error: default was rewritten since that example was recorded")
    assert out.endswith("> :undo\nerror: that example is no longer in default (was it dropped or edited?)\n")  # 'a', dropped
    assert [e.output for e in datasets.load_dataset(home, "default").examples] == ["A hardmask.", "3"]


# 4 -----------------------------------------------------------------------------------------------

def test_train_refuses_before_training_when_adapters_cannot_be_written(make_session, transcript, home):
    (home / "adapters").write_text("a file where the folder should be\n")  # unwritable, even for root
    session = make_session()
    session.ui.progress_every = 0  # a line for every step trained
    code, out = transcript(session, [":add q => a", ":train"])
    assert code == 1 and out.endswith(f"> :train\nerror: cannot save adapters: {home / 'adapters'} is not a folder\n")
    assert session.active_adapter is None and "training" not in out


def test_an_adapter_the_disk_refuses_at_the_end_stays_usable_and_can_be_saved_later(make_session, transcript, home, tmp_path, small_file_limit):
    import resource

    from lorachat import adapters

    session = make_session()
    transcript(session, [":add What is SOH? => A hardmask."])
    small_file_limit(5000)  # the probe and adapter_config.json fit, the weights do not: a disk filling up
    code, out = transcript(session, [":train steps=2 until=steps", ":adapters", f":save default {tmp_path / 'x'}"], keep_going=True)
    small_file_limit(resource.RLIM_INFINITY)
    lines = out.splitlines()
    assert code == 1 and lines[1].startswith("trained default: 2 steps")
    assert lines[2] == ("error: could not save adapter 'default': File too large; 'default' is kept in memory, unsaved "
                        "(and is lost when the session ends): :save default once adapters/ can be written, or :save default DIR")
    assert session.active_adapter == "default" and lines[5].startswith("*  default ") and lines[5].endswith(" unsaved")
    assert not (home / "adapters" / "default").exists() and not (tmp_path / "x").exists()
    answer = transcript(session, ["What is SOH?"])[1]
    code, out = transcript(session, [f":save default {tmp_path / 'copy'}", ":save default", ":save default", ":adapters"], keep_going=True)
    assert f"saved adapter 'default' to {tmp_path / 'copy'}; it is still unsaved in the workspace" in out
    assert f"> :save default\nsaved adapter 'default' to {home / 'adapters' / 'default'}\n" in out
    assert "error: adapter 'default' is saved already" in out and out.splitlines()[-1].endswith(" yes")
    transcript(session, [":use base"])
    adapters.remove(session, "default")
    assert transcript(session, [":use default", "What is SOH?"])[1].endswith(answer.split("\n", 1)[1])
    assert (tmp_path / "copy" / "adapter_model.safetensors").is_file()


# 5 -----------------------------------------------------------------------------------------------

def test_adapters_load_across_dtypes_and_a_real_mismatch_says_what_differs(make_session, home, transcript):
    import json
    import shutil

    from lorachat import fingerprint
    from test_adapters import shelve

    full = make_session(dtype="float32")
    shelve(full, ["a"])
    legacy = fingerprint.loaded_fingerprint(full)   # what lorachat stored before weight files were read
    for name, change in (("old", {"base_fingerprint": legacy}),
                         ("other", {"base_fingerprint": "sha256:0123", "base": {"path": "/elsewhere/opt", "config": {"hidden_size": 1024}}})):
        shutil.copytree(home / "adapters" / "a", home / "adapters" / name)
        meta = json.loads((home / "adapters" / name / "lorachat.json").read_text())
        meta = {k: v for k, v in meta.items() if k != "base"} | change
        (home / "adapters" / name / "lorachat.json").write_text(json.dumps(meta))
    for dtype in ("float16", "bfloat16"):
        half = make_session(dtype=dtype)
        code, out = transcript(half, [":use a"])
        assert code == 0 and out.endswith("using adapter 'a'\n") and "loaded_fingerprint" not in half.extensions
    code, out = transcript(half, [":use old"])   # bfloat16: the old fingerprint did round to it
    assert code == 0
    code, out = transcript(make_session(dtype="float16"), [":use old", ":use other"], keep_going=True)
    old, other = [line for line in out.splitlines() if line.startswith("error: ")]
    assert old.startswith("error: adapter 'old' was made for base model 'tiny' (sha256:") and "whose fingerprint also depends on the dtype" in old
    assert "the loaded 'tiny' in float16" in old and old.endswith("load the base in the --dtype it was trained in; --force loads it anyway")
    assert "hidden_size 1024 there, 512 here; loaded from /elsewhere/opt there, " in other
    assert transcript(full, [":use old", ":use a"])[0] == 0


def test_a_hub_model_is_fingerprinted_from_its_cached_snapshot(make_session, tmp_path, monkeypatch, tiny_cache):
    import shutil

    import huggingface_hub.constants

    from lorachat import adapters

    repo = tmp_path / "hub" / "models--lorachat-test--tiny"
    shutil.copytree(tiny_cache / "tiny-v1", repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = make_session("lorachat-test/tiny", dtype="bfloat16")
    assert hub.loaded.folder == str(repo / "snapshots" / "0123abcd")
    assert adapters.base_fingerprint(hub) == adapters.base_fingerprint(make_session(dtype="float32"))
