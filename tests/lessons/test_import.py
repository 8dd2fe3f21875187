""":import through the `datasets` library: every format from files written here, auto-detection,
limit, skipped rows, and sources that cannot be read."""
import json
import time

import pytest

from lorachat.core.prompts import Example
from lorachat.lessons import jsonl
from lorachat.lessons.formats import detect_format

ASK = "Answer the question."


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def imported(home, name="default"):
    loaded = jsonl.load_dataset(home, name)
    assert loaded.bad_lines == []
    return loaded.examples


def test_alpaca_json_array_auto(make_session, transcript, home, tmp_path, capfd):
    source = tmp_path / "alpaca.json"
    source.write_text(json.dumps([{"instruction": "Name a color.", "input": "", "output": "Blue."},
                                  {"instruction": "Add.", "input": "2+2", "output": "4"},
                                  {"instruction": "No output.", "input": "", "output": ""},
                                  {"input": "Only input", "output": "uses the session's instruction"}]))
    session = make_session()
    capfd.readouterr()
    code, out = transcript(session, [f":import {source}"])
    assert code == 0
    assert out == (f"> :import {source}\nformat auto: chose alpaca (fields instruction, input, output)\n"
                   "imported 3 examples (format alpaca) into default; skipped 1 (1 with an empty output)\n")
    assert imported(home) == [Example("Name a color.", "", "Blue."), Example("Add.", "2+2", "4"),
                              Example(ASK, "Only input", "uses the session's instruction")]
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""  # no progress bars, no library logging
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == ["datasets", "datasets/default.jsonl"]


def test_prompt_completion_csv(make_session, transcript, home, tmp_path):
    source = tmp_path / "pc.csv"
    source.write_text('\ufeffprompt,completion\nWhat is SOH?,A hardmask.\n"a, quoted",b\nWhat is 2+2?,4\nPi?,3.140\n',
                      encoding="utf-8")
    session = make_session()
    code, out = transcript(session, [":instruction Be brief.", f":import {source} format=prompt-completion"])
    assert code == 0 and out.endswith("imported 4 examples (format prompt-completion) into default; skipped 0\n")
    # numbers are answers as written, not what pandas would read them as
    assert imported(home) == [Example("Be brief.", "What is SOH?", "A hardmask."), Example("Be brief.", "a, quoted", "b"),
                              Example("Be brief.", "What is 2+2?", "4"), Example("Be brief.", "Pi?", "3.140")]


def test_messages_each_assistant_turn_after_the_turns_before_it(make_session, transcript, home, tmp_path):
    source = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "u1"},
                      {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                      {"role": "assistant", "content": "a2"}]},
        {"messages": [{"role": "user", "content": "no system"}, {"role": "assistant", "content": "x"}]},
        # a bad turn late in a row: none of the row's examples are kept
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "kept?"},
                      {"role": "assistant", "content": "two in a row"}]},
        {"messages": [{"role": "user", "content": "unanswered"}]}])
    session = make_session()
    code, out = transcript(session, [":dataset chat", f":import {source}"])
    assert code == 0
    assert out.endswith("format auto: chose messages (fields messages)\nimported 3 examples (format messages) into chat; "
                        "skipped 2 (1 with turns that do not alternate user and assistant, 1 without an assistant turn)\n")
    assert imported(home, "chat") == [Example("Be exact.", "u1", "a1"), Example("Be exact.", "u2", "a2", history=(("u1", "a1"),)),
                                      Example(ASK, "no system", "x")]


def test_sharegpt_conversations(make_session, transcript, home, tmp_path):
    source = write_jsonl(tmp_path / "share.jsonl", [
        {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "h1"},
                           {"from": "gpt", "value": "g1"}]},
        {"conversations": [{"from": "human", "value": "h"}, {"from": "tool", "value": "t"}]}])
    session = make_session()
    code, out = transcript(session, [f":import {source}"])
    assert code == 0 and out.endswith("imported 1 example (format sharegpt) into default; skipped 1 (1 with a 'tool' turn)\n"
                                      "instruction set: sys (every example in default is asked under it)\n")
    assert session.instruction == "sys"   # what was imported is asked as it was taught
    assert imported(home) == [Example("sys", "h1", "g1")]


def test_text_rows_and_limit(make_session, transcript, home, tmp_path):
    source = write_jsonl(tmp_path / "text.jsonl", [{"text": f"row {i}"} for i in range(10)])
    session = make_session()
    code, out = transcript(session, [f":import {source} limit=3"])
    assert code == 0 and out.endswith("imported 3 examples (format text) into default; skipped 0\n")
    assert imported(home) == [Example(text="row 0"), Example(text="row 1"), Example(text="row 2")]


def test_piqa_parquet_takes_the_labelled_solution(make_session, transcript, home, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "piqa.parquet"
    pq.write_table(pa.table({"goal": ["Open a jar", "Dry a phone", "Test split row"],
                             "sol1": ["Twist the lid.", "Use a microwave.", "a"],
                             "sol2": ["Hammer it.", "Put it in rice.", "b"], "label": [0, 1, -1]}), source)
    session = make_session()
    code, out = transcript(session, [f":import {source}"])
    assert code == 0
    assert out.endswith("format auto: chose piqa (fields goal, sol1, sol2, label)\n"
                        "imported 2 examples (format piqa) into default; skipped 1 (1 with a label other than 0 or 1)\n")
    assert imported(home) == [Example(ASK, "Open a jar", "Twist the lid."), Example(ASK, "Dry a phone", "Put it in rice.")]


@pytest.mark.parametrize("columns, fmt", [
    (["conversations", "id"], "sharegpt"), (["messages"], "messages"), (["goal", "sol1", "sol2", "label"], "piqa"),
    (["prompt", "completion"], "prompt-completion"), (["instruction", "input", "output", "text"], "alpaca"),
    (["input", "output"], "alpaca"), (["text", "meta"], "text")])
def test_auto_detection(columns, fmt):
    assert detect_format(columns) == fmt


def test_unreadable_sources_get_one_line_and_write_nothing(make_session, transcript, home, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hermetic even where a network exists
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "notes.txt").write_text("hello")
    write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "reply": "r"}])
    write_jsonl(tmp_path / "ok.jsonl", [{"text": "t"}])
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "zeros.jsonl").symlink_to("/dev/zero")
    (tmp_path / "nulls.jsonl").write_text('\nnull\n{"input": "q", "output": "a"}\n')   # pyarrow: a segfault
    (tmp_path / "nulls.json").write_text('[null, {"input": "q", "output": "a"}]')
    (tmp_path / "latin1.jsonl").write_bytes(b'{"input": "caf\xe9?", "output": "a"}\n')
    import pyarrow
    import pyarrow.parquet

    (tmp_path / "surrogate.jsonl").write_text('{"input": "q", "output": "a"}\n{"input": "q", "output": "a \\ud800"}\n')
    pyarrow.parquet.write_table(pyarrow.table({"input": pyarrow.array([], pyarrow.string())}), tmp_path / "none.parquet")
    lines = [f":import {tmp_path / 'broken.jsonl'}", f":import {tmp_path / 'empty.json'}", f":import {tmp_path / 'notes.txt'}",
             f":import {tmp_path / 'missing.jsonl'}", f":import {tmp_path / 'folder.json'}", f":import {tmp_path / 'odd.jsonl'}",
             f":import {tmp_path / 'ok.jsonl'} split=test", f":import {tmp_path / 'ok.jsonl'} format=alpaca",
             ":import someone/some-dataset", ":import 'not a hub id!'", f":import {tmp_path / 'zeros.jsonl'}",
             f":import {'x' * 5000}", ":import ~no-such-user-here/x.json", ':import "nul\x00byte"',
             f":import {tmp_path / 'nulls.jsonl'}", f":import {tmp_path / 'nulls.json'}", f":import {tmp_path / 'latin1.jsonl'}",
             f":import {tmp_path / 'none.parquet'}", f":import {tmp_path / 'ok.jsonl'} split=train[:ten]",
             f":import {tmp_path / 'surrogate.jsonl'}"]
    session = make_session()
    capfd.readouterr()
    start = time.monotonic()
    code, out = transcript(session, lines, keep_going=True)
    assert time.monotonic() - start < 20
    assert code == 1 and out.count("\nerror: ") == len(lines) and "Traceback" not in out
    assert f"cannot import {tmp_path / 'broken.jsonl'}: line 2 is not valid JSON (" in out   # numbered as :examples does
    assert "the file is empty" in out and "unknown file type '.txt'" in out
    assert "missing.jsonl: no such file" in out and "it is a folder" in out
    assert "cannot tell the format from the fields (question, reply); give format=" in out
    assert 'Unknown split "test"' in out
    assert "nothing imported from" in out and "skipped 1 (1 without an output)" in out
    assert "cannot import someone/some-dataset: the hub is unreachable" in out
    assert "not a file here, nor a hub dataset id" in out and "zeros.jsonl: not a regular file" in out
    assert "not a usable file name (File name too long)" in out and "no such home directory" in out
    assert "nulls.jsonl: line 2 is null, not a JSON object" in out and "nulls.json: its first row is null" in out
    assert "latin1.jsonl: it holds text that is not UTF-8 (byte 0xe9)" in out
    assert f"error: no examples in {tmp_path / 'none.parquet'}\n" in out
    assert "surrogate.jsonl: line 2 holds an escaped lone surrogate (such as \\ud800), which is no character\n" in out   # pyarrow: "row 1"   # datasets: "BatchSize must be greater than 0"
    assert "error: split='train[:ten]' is not a split: give a name (train, test) or a slice (train[:100], train[10%:])" in out
    assert list(home.iterdir()) == []
    assert capfd.readouterr().err == ""   # the library's own error logs stay quiet: ours is the one line
