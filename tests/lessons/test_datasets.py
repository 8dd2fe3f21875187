"""Examples on disk and the commands that record them: format, durability, bad files, bad input."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorachat.core.errors import LorachatError
from lorachat.core.prompts import Example
from lorachat.lessons import jsonl

SOH = Example("Answer the question.", "What is SOH?", "In semiconductor manufacturing, SOH(Spin On Hardmask) is a high carbon-containing polymer material.")


def lines_of(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_append_creates_the_file_and_reads_back(home):
    assert jsonl.load_dataset(home, "default").examples == []
    assert not (home / "datasets").exists()  # reading writes nothing
    assert jsonl.append_example(home, "default", SOH) == 1
    assert jsonl.append_example(home, "default", Example(text="raw text\nline two")) == 2
    path = home / "datasets" / "default.jsonl"
    assert jsonl.dataset_path(home, "default") == path
    assert lines_of(path) == [{"instruction": SOH.instruction, "input": SOH.input, "output": SOH.output},
                              {"text": "raw text\nline two"}]
    loaded = jsonl.load_dataset(home, "default")
    assert loaded.examples == [SOH, Example(text="raw text\nline two")] and loaded.bad_lines == []
    assert jsonl.list_datasets(home) == [("default", 2)]


def test_odd_characters_stay_on_one_line(home):
    tricky = Example("inst", "a\u2028b\x85c\r\nd", "한국어 \x00 \"quoted\" \\ end")
    jsonl.append_example(home, "odd", tricky)
    raw = (home / "datasets" / "odd.jsonl").read_text(encoding="utf-8")
    assert len(raw.splitlines()) == 1 and "한국어" in raw
    assert jsonl.load_dataset(home, "odd").examples == [tricky]


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", ".hidden", "..", "", "x" * 10_000, "a\x00b", "a\nb", "é"])
def test_names_that_leave_the_workspace_are_refused(home, make_session, transcript, name):
    with pytest.raises(LorachatError):
        jsonl.dataset_path(home, name)
    session = make_session()
    code, out = transcript(session, [f':dataset "{name}"', ":add q => a"] if "\n" not in name else [":dataset a\nb"])
    assert code == 1 and out.count("error: ") == 1 and "Traceback" not in out
    assert session.dataset == "default" and list(home.iterdir()) == []


def test_record_show_drop_undo_transcript(make_session, transcript, home):
    session = make_session()
    session.settings.max_new_tokens = 4
    code, out = transcript(session, [
        ":dataset semi", ":add What is SOH? => A hardmask.", "What is SiON?", ":good",
        ":fix Silicon oxynitride.", ":instruction Be brief.", ":add Q4 => A4\nsecond line", ":examples 2"])
    assert code == 0
    path = home / "datasets" / "semi.jsonl"
    answer = session.last_answer.strip()
    assert lines_of(path) == [
        {"instruction": "Answer the question.", "input": "What is SOH?", "output": "A hardmask."},
        {"instruction": "Answer the question.", "input": "What is SiON?", "output": answer},
        {"instruction": "Answer the question.", "input": "What is SiON?", "output": "Silicon oxynitride."},
        {"instruction": "Be brief.", "input": "Q4", "output": "A4\nsecond line"}]
    assert out.startswith(f"> :dataset semi\ndataset semi: 0 examples in {path} (new: the file is written with the first example)\n"
                          "> :add What is SOH? => A hardmask.\nadded to semi (1 example): What is SOH? => A hardmask.\n")
    assert out.endswith("dataset semi: 4 examples, showing the last 2\n"
                        "3. [Answer the question.] What is SiON? => Silicon oxynitride.\n"
                        "4. [Be brief.] Q4 => A4 ⏎ second line\n")
    code, out = transcript(session, [":drop 1", ":undo", ":dataset default", ":add x => y", ":undo", ":undo", ":datasets"])
    assert code == 0
    assert out == ("> :drop 1\ndropped 1 from semi (3 examples left): What is SOH? => A hardmask.\n"
                   "> :undo\nremoved from semi (2 examples left): Q4 => A4 ⏎ second line\n"
                   f"> :dataset default\ndataset default: 0 examples in {home / 'datasets' / 'default.jsonl'} "
                   "(new: the file is written with the first example)\n"
                   "instruction still: Be brief. (:instruction default sets 'Answer the question.')\n"
                   "> :add x => y\nadded to default (1 example): x => y\n"
                   "> :undo\nremoved from default (0 examples left): x => y\n"
                   "> :undo\nremoved from semi (1 example left): What is SiON? => Silicon oxynitride.\n"
                   "> :datasets\n   dataset  examples  problems\n*  default  0\n   semi     1\n")
    assert [line["output"] for line in lines_of(path)] == [answer]
    assert [p.name for p in (home / "datasets").iterdir() if p.name.startswith(".")] == []


def test_undo_of_an_example_dropped_meanwhile_moves_on(make_session, transcript, home):
    session = make_session()
    code, out = transcript(session, [":add a => 1", ":add b => 2", ":drop 2", ":undo", ":undo", ":undo"], keep_going=True)
    assert out.endswith("> :undo\nerror: that example is no longer in default (was it dropped or edited?) [b => 2]\n"
                        "> :undo\nremoved from default (0 examples left): a => 1\n"
                        "> :undo\nerror: nothing to undo: no example was recorded in this session\n")


def test_undo_takes_back_a_whole_import_and_only_while_all_of_it_is_there(make_session, transcript, home, tmp_path):
    """:undo after :import removes the lines that import wrote, in one rewrite, and not an equal
    line written since; an import one of whose rows was dropped meanwhile is left (one line)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(3)))
    session = make_session()
    code, out = transcript(session, [":add first => 1", f":import {rows}", ":add q1 => a1", ":undo", ":undo", ":undo", ":undo"],
                           keep_going=True)
    assert "> :undo\nremoved from default (4 examples left): q1 => a1\n" in out   # the :add of an equal question
    assert "> :undo\nremoved from default (1 example left): the 3 examples :import added\n" in out
    assert out.endswith("> :undo\nremoved from default (0 examples left): first => 1\n"
                        "> :undo\nerror: nothing to undo: no example was recorded in this session\n")
    code, out = transcript(session, [f":import {rows}", ":add last => 9", ":drop 2", ":undo", ":undo", ":examples"], keep_going=True)
    assert out.count("> :undo\nerror: ") == 1 and "error: one of the examples of that :import is no longer in default" in out
    assert [line["input"] for line in lines_of(home / "datasets" / "default.jsonl")] == ["q0", "q2"]
    transcript(session, [f":import {rows}"])
    jsonl.remove_example(home, "default", 1)   # another session rewrites the file
    code, out = transcript(session, [":undo"], keep_going=True)
    assert out.startswith("> :undo\nerror: default was rewritten since that :import (by another session or an editor)"), out
    assert out.endswith(" [the 3 examples :import added]\n"), out


def test_a_linked_dataset_stays_linked_through_drop_and_undo_and_an_import_with_a_line_gone_is_not_undone(
        make_session, transcript, home, tmp_path):
    """:drop rewrites the file a dataset link points at (the link stays, as appends follow it); an
    :import one of whose rows was dropped is not taken back, even when an equal row was appended since
    by someone else (another session, an editor): it would remove that row."""
    folder, elsewhere = home / "datasets", tmp_path / "films.jsonl"
    folder.mkdir()
    elsewhere.write_bytes("\ufeff".encode() + b"\n")   # only a byte-order mark: an empty file, to an editor
    (folder / "films.jsonl").symlink_to(elsewhere)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"input": f"b{i}", "output": f"B{i}"}) + "\n" for i in (1, 2)))
    session = make_session()
    code, out = transcript(session, [":dataset films", ":add a => A", f":import {rows}", ":drop 3"])
    assert code == 0, out
    with open(folder / "films.jsonl", "a") as other:
        other.write(json.dumps({"instruction": "Answer the question.", "input": "b2", "output": "B2"}) + "\n")
    code, out = transcript(session, [":undo", ":undo"], keep_going=True)
    assert out.startswith("> :undo\nerror: one of the examples of that :import is no longer in films"), out
    assert "removed from films (2 examples left): a => A" in out
    assert (folder / "films.jsonl").is_symlink()
    assert [e.input for e in jsonl.load_dataset(home, "films").examples] == ["b1", "b2"]
    assert elsewhere.read_bytes().startswith("\ufeff\n".encode())


def test_tab_completes_dataset_names(make_session, home):
    from prompt_toolkit.document import Document

    from lorachat.chat.repl import make_completer

    jsonl.append_example(home, "films", SOH)
    jsonl.append_example(home, "facts", SOH)
    session = make_session()
    completions = make_completer(session).get_completions(Document(":dataset f"), None)
    assert [c.text for c in completions] == ["facts", "films"]


def test_interactive_add_asks_for_both(make_session, transcript, home):
    session = make_session()
    answers = iter(["What is SOH?", "A hardmask\nmade of carbon."])
    session.read_text = lambda label: next(answers)
    code, out = transcript(session, [":add"])
    assert code == 0 and "added to default (1 example)" in out
    assert jsonl.load_dataset(home, "default").examples == [Example("Answer the question.", "What is SOH?", "A hardmask\nmade of carbon.")]

    def ended(label):
        raise EOFError
    session.read_text = ended
    code, out = transcript(session, [":add"])
    assert code == 1 and out == "> :add\nerror: nothing added (input ended)\n"


BAD_INPUT = [":add", ":add no arrow", ":add => answer only", ":add question only =>", ":good", ":good now",
             ":fix", ":fix   ", ":drop", ":drop 0", ":drop -1", ":drop x", ":drop 1 2", ":drop 99", ":examples x",
             ":examples 0", ":examples 1 2", ":examples 'unbalanced", ":undo", ":undo 1", ":datasets x",
             ":dataset a b", ":dataset ..", ":import", ":import a b", ":import x.json limit=abc",
             ":import x.json limit=-1", ":import x.json foo=1", ":import x.json format=yaml", ":import x.json limit=1 limit=2",
             f":drop {'9' * 5000}", ":examples ²", f":examples {'9' * 5000}", f":import x.json limit={'9' * 5000}"]   # int(): 4300 digits


def test_bad_input_gets_one_line_and_writes_nothing(make_session, transcript, home):
    session = make_session()
    code, out = transcript(session, BAD_INPUT, keep_going=True)
    assert code == 1
    assert out.count("\nerror: ") == len(BAD_INPUT) and "Traceback" not in out
    assert list(home.iterdir()) == []


def test_corrupt_line_in_the_middle_is_reported_and_never_rewritten(make_session, transcript, home):
    folder = home / "datasets"
    folder.mkdir()
    path = folder / "broken.jsonl"
    good = json.dumps({"instruction": "i", "input": "q1", "output": "a1"}).encode()
    content = b"\n".join([good, b'{"input": "q2", "outp', b"\xff\xfe junk", b"[1, 2]", b"[" * 100_000,
                          b"", json.dumps({"text": "t"}).encode(), b'{"input": "q3", "output": " "}']) + b"\n"
    path.write_bytes(content)
    loaded = jsonl.load_dataset(home, "broken")
    assert loaded.bad_lines == [2, 3, 4, 5, 8]
    assert loaded.problems[5] == "is not valid JSON (nested too deeply)" and loaded.problems[8] == 'has an empty "output"'
    assert loaded.examples == [Example("i", "q1", "a1"), Example(text="t")]
    session = make_session()
    code, out = transcript(session, [":dataset broken", ":examples", ":drop 1", ":datasets"], keep_going=True)
    assert code == 1
    assert f"dataset broken: 2 examples in {path}\nwarning: {path}: 5 invalid line(s) skipped (line 2 is not valid JSON" in out
    assert "line 3 is not UTF-8 text; line 4 is not a JSON object; and 2 more); fix or delete them in an editor" in out
    assert "1. [i] q1 => a1\n2. (text) t\n" in out
    assert "> :drop 1\nerror: " in out and "never rewritten while they are there: fix or delete those lines" in out
    assert "*  broken   2         5 invalid lines" in out
    assert out.count("error: ") == 1  # only the refused :drop
    assert path.read_bytes() == content


def test_append_after_a_torn_last_line_keeps_the_new_example_whole(home):
    folder = home / "datasets"
    folder.mkdir()
    (folder / "torn.jsonl").write_bytes(b'{"input": "q", "output": "a"}\n{"input": "half')
    assert jsonl.append_example(home, "torn", SOH) == 2
    loaded = jsonl.load_dataset(home, "torn")
    assert loaded.examples == [Example("", "q", "a"), SOH] and loaded.bad_lines == [2]


def test_leftover_temp_files_are_ignored_and_cleaned(make_session, transcript, home):
    jsonl.append_example(home, "d", SOH)
    jsonl.append_example(home, "d", Example(text="two"))
    leftover = home / "datasets" / ".d.jsonl.tmp-999"
    leftover.write_text("half a rewrite")
    assert jsonl.list_datasets(home) == [("d", 2)]
    session = make_session()
    code, out = transcript(session, [":dataset d", ":drop 2"])
    assert code == 0 and not leftover.exists()
    assert jsonl.load_dataset(home, "d").examples == [SOH]


def test_a_failed_write_is_one_line_and_leaves_no_half_line(make_session, transcript, home, small_file_limit):
    jsonl.append_example(home, "full", SOH)
    path = home / "datasets" / "full.jsonl"
    before = path.read_bytes()
    session = make_session()
    small_file_limit(len(before) + 10)   # room for 10 bytes of the next line, not all of it
    code, out = transcript(session, [":dataset full", ":add q => a", ":undo"], keep_going=True)
    small_file_limit(resource.RLIM_INFINITY)
    assert code == 1 and "Traceback" not in out
    assert "> :add q => a\nerror: cannot write " in out and "File too large; nothing was added\n" in out
    assert "> :undo\nerror: nothing to undo" in out
    assert path.read_bytes() == before


def test_hostile_files_in_place_of_a_dataset(make_session, transcript, home, tmp_path):
    folder = home / "datasets"
    folder.mkdir()
    (folder / "dir.jsonl").mkdir()
    os.mkfifo(folder / "pipe.jsonl")   # reading it would block forever
    (folder / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")   # dangling: must not create outside
    session = make_session()
    code, out = transcript(session, [":dataset dir", ":dataset pipe", ":datasets", ":dataset link", ":add q => a"], keep_going=True)
    assert code == 1 and "Traceback" not in out
    assert f"error: {folder / 'dir.jsonl'} is not a regular file; move it out of the way" in out
    assert f"error: {folder / 'pipe.jsonl'} is not a regular file" in out
    assert ("   dir      ?         the file is not a regular file; move it out of the way\n   link     0\n"
            "   pipe     ?         the file is not a regular file; move it out of the way\n") in out
    assert "> :add q => a\nerror: " + f"{folder / 'link.jsonl'} is a symbolic link to a missing file" in out
    assert not (tmp_path / "outside.jsonl").exists()


def test_a_file_of_another_kind_behind_a_dataset_name_is_never_written_to(make_session, transcript, home, tmp_path):
    """datasets/notes.jsonl linked to a user's notes (no line of it an example): :add and :import
    refuse in one line and the notes stay as they were; a dataset with one good line takes :add."""
    folder = home / "datasets"
    folder.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"buy milk\ncall Ada\n")
    (folder / "notes.jsonl").symlink_to(notes)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"input": "q2", "output": "a2"}) + "\n")
    (folder / "mixed.jsonl").write_bytes(b'not json\n{"input": "q", "output": "a"}\n')
    session = make_session()
    code, out = transcript(session, [":dataset notes", ":add q => a", f":import {rows}", ":dataset mixed", ":add q3 => a3"],
                           keep_going=True)
    assert code == 1 and "Traceback" not in out
    refused = (f"error: nothing written to {folder / 'notes.jsonl'}: it holds no example, only lines that are not one "
               "(line 1 is not valid JSON (Expecting value); line 2 is not valid JSON (Expecting value)); fix it in an editor, "
               "or choose another dataset")
    assert out.count(refused) == 2, out
    assert notes.read_bytes() == b"buy milk\ncall Ada\n"
    assert "added to mixed (2 examples)" in out
    assert [e.input for e in jsonl.load_dataset(home, "mixed").examples] == ["q", "q3"]


def test_acknowledged_adds_survive_sigkill(home):
    """Kill -9 right after reading an acknowledgement: every acknowledged example is on disk, whole."""
    process = subprocess.Popen([sys.executable, "-m", "lorachat", "--model", "tiny", "--home", str(home), "--dataset", "lessons"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        # queue many more lines than we wait for, so the kill lands while later ones are being written
        process.stdin.write("".join(f":add question {i} => answer {i}\n" for i in range(200)))
        process.stdin.flush()
        acknowledged = 0
        deadline = time.monotonic() + 120
        while acknowledged < 25 and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, "lorachat ended early"
            acknowledged += line.startswith("added to lessons")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert acknowledged == 25
    loaded = jsonl.load_dataset(home, "lessons")
    expected = [Example("Answer the question.", f"question {i}", f"answer {i}") for i in range(200)]
    assert loaded.bad_lines == [] and len(loaded.examples) >= 25
    assert loaded.examples == expected[:len(loaded.examples)]   # every acknowledged one, whole, in order


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text(), st.text(), st.one_of(st.none(), st.text(min_size=1)))
def test_any_example_round_trips_through_one_line(instruction, question, answer, text):
    example = Example(text=text) if text is not None else Example(instruction, question, answer)
    try:
        line = jsonl.format_line(example)
    except LorachatError as exc:   # lone surrogates (not Unicode text), or an empty answer: refused with one line
        assert "not valid Unicode" in str(exc) or text is None and not answer.strip(), exc
        return
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert jsonl.parse_line(line.decode("utf-8")) == example


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_line_parses_or_says_why(text):
    try:
        assert isinstance(jsonl.parse_line(text), Example)
    except ValueError as exc:
        assert str(exc).startswith(("is not", "has "))
