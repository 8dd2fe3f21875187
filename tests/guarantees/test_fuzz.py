"""Fuzzing every parser and the command surface: any input gets one line, never a traceback."""
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorachat.chat import options
from lorachat.chat.commands import find, split_command
from lorachat.chat.repl import logical_lines
from lorachat.chat.session import Settings
from lorachat.core.errors import LorachatError
from lorachat.core.names import check_name

any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_fuzz_key_value_parser(text):
    try:
        words = options.split_words(text)
        _, pairs = options.split_kv(words)
        options.apply_kv(Settings(), pairs)
    except LorachatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["max_new_tokens", "temperature", "do_sample", "top_p", "seed", "nope"]),
                       any_text, max_size=4))
def test_fuzz_values_of_known_keys(pairs):
    try:
        result = options.apply_kv(Settings(), pairs)
    except LorachatError:
        return
    assert 1 <= result.max_new_tokens <= 8192 and 0 < result.top_p <= 1 and result.temperature > 0


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_fuzz_line_parser(text):
    try:
        for line in logical_lines(text.splitlines()):
            if line.startswith(":"):
                name, _ = split_command(line)
                find(name)
    except LorachatError:
        pass


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_fuzz_names_never_leave_the_workspace(text):
    try:
        name = check_name(text, "dataset")
    except LorachatError:
        return
    assert "/" not in name and "\\" not in name and not name.startswith(".") and name.isprintable()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([":set", ":instruction", ":help", ":info", ":quit"]), min_size=1, max_size=3), any_text)
def test_fuzz_session_commands_give_one_line_errors(make_session, transcript, heads, tail):
    session = make_session()
    transcript(session, [f"{head} {tail}".replace('"""', "") for head in heads], keep_going=True)
    for line in session.out.getvalue().splitlines():
        assert "Traceback" not in line


def test_huge_line_gets_one_line(make_session, transcript):
    session = make_session()
    code, out = transcript(session, ["word " * 200_000, ":" + "x" * 1_000_000, ":set " + "y=1 " * 100_000], keep_going=True)
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    assert errors[0].startswith("error: the question is too long")
    assert all(len(e) < 300 for e in errors)


def test_binary_junk_on_stdin(home):
    junk = (b":set max_new_tokens=4\n" + bytes(range(256)) * 3 + b"\n\xff\xfe\x00:set \x00\x01=\xff\n:\x80\x81\n:\x01\x02\n"
            b":add Q\xff? => A.\n:set \x1b[31mred\x07\n")
    proc = subprocess.run([sys.executable, "-m", "lorachat", "--model", "tiny", "--home", str(home), "--keep-going"],
                          input=junk, capture_output=True, timeout=180)
    assert b"Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == 1
    assert b"error: unknown command" in proc.stdout
    assert b"> :add Q\xef\xbf\xbd? => A.\nerror: this line is not UTF-8 text (byte 0xff)" in proc.stdout
    assert not (home / "datasets").exists()
    assert b"> :set ^[[31mred^G\n" in proc.stdout   # echoed as a terminal shows control keys, not driving it
    assert proc.stdout.count(b"error: ") == proc.stdout.count(b"\nerror: ")  # each at a line start
