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

@pytest.fixture
def shelved(make_session):
    """A session with saved adapters a, b, c (none loaded), made as tests/test_adapters.py makes them."""
    from test_adapters import shelve

    session = make_session()
    shelve(session, ["a", "b", "c"])
    return session


def test_max_loaded_1_keeps_one_adapter_loaded(shelved, transcript):
    from lorachat import adapters

    session = shelved
    transcript(session, [":use a", ":use b", ":set max_loaded=1"])
    assert adapters.loaded_names(session) == ["b"]
    transcript(session, [":set max_loaded=3", ":use a", ":use c", ":set max_loaded=1"])
    assert adapters.loaded_names(session) == ["c"] and session.active_adapter == "c"
    transcript(session, [":use a"])
    assert adapters.loaded_names(session) == ["a"]
