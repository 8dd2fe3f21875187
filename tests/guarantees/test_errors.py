"""User mistakes get one line that says what to do, and change nothing."""


def test_help_of_a_bare_colon_is_one_line(make_session, transcript):
    session = make_session()
    code, out = transcript(session, [":help :", ":help ::", ":help :: train", ":help :set"], keep_going=True)
    assert code == 1 and "Traceback" not in out
    assert out.count("error: :help takes one command name") == 2
    assert "> :help :: train\n:train [NAME] [key=value ...]\n" in out
    assert "> :help :set\n:set [key=value ...]\n" in out


def test_scale_of_an_unknown_adapter_and_quit_with_words_are_errors(shelved, transcript):
    session = shelved
    code, out = transcript(session, [":scale nosuch", ":scale nosuch 0.5", ":scale aa", ":quit now", ":scale a"], keep_going=True)
    assert code == 1
    assert out.splitlines()[1] == "error: no adapter named 'nosuch' (have: a, b, c)"
    assert out.splitlines()[3].startswith("error: no adapter named 'nosuch'")
    assert out.splitlines()[5] == "error: no adapter named 'aa' (did you mean a?) (have: a, b, c)"
    assert out.splitlines()[7] == "error: :quit takes no arguments (got 'now')"
    assert out.endswith("> :scale a\na: scale 1\n")  # the session did not end at ':quit now'


def test_eval_of_an_unknown_adapter_says_so_before_any_work(shelved, transcript, monkeypatch):
    """The name is checked before the base answers the probes (half a minute on smol)."""
    from lorachat.adapters import side_by_side

    answered, real = [], side_by_side.session_reference
    monkeypatch.setattr(side_by_side, "session_reference", lambda *a, **k: answered.append(1) or real(*a, **k))
    code, out = transcript(shelved, [":add What is SOH? => A film.", ":eval a nosuch builtin=4"], keep_going=True)
    assert code == 1 and out.endswith("> :eval a nosuch builtin=4\nerror: no adapter named 'nosuch' (have: a, b, c)\n"), out
    assert not answered
    assert transcript(shelved, [":eval a builtin=4"])[0] == 0 and answered   # a known name goes on to the probes


def test_add_splits_at_the_first_spaced_arrow_and_says_what_it_stored(make_session, transcript, home):
    from lorachat.lessons import jsonl

    session = make_session()
    code, out = transcript(session, [":add What is 2=>3? => Nothing => at all.", ":add a=>b", ":help add"], keep_going=True)
    assert code == 1
    assert "added to default (1 example): What is 2=>3? => Nothing => at all.\n" in out
    assert "error: write :add QUESTION => ANSWER (with a space on each side of '=>')" in out
    assert "stores the question 'What is 2=>3?'" in out
    [stored] = jsonl.load_dataset(home, "default").examples
    assert (stored.input, stored.output) == ("What is 2=>3?", "Nothing => at all.")


def test_add_of_an_example_longer_than_the_model_warns_and_keeps_it(make_session, transcript, home):
    from lorachat.lessons import jsonl

    session = make_session()
    long_answer = " ".join(f"word{n}" for n in range(400))
    code, out = transcript(session, [":add short => fine", f":add long => {long_answer}"])
    assert code == 0
    warning = out.splitlines()[-1]
    assert warning.startswith("warning: this example is ") and "more than the model's 512 positions" in warning
    assert warning.endswith(":drop 2") and out.count("warning") == 1
    assert jsonl.load_dataset(home, "default").examples[-1].output == long_answer


def test_undo_removes_only_the_line_this_session_wrote(make_session, transcript, home):
    from lorachat.core.prompts import Example
    from lorachat.lessons import jsonl

    soh = Example("Answer the question.", "What is SOH?", "A hardmask.")
    jsonl.append_example(home, "default", soh)                 # another session's line
    jsonl.append_example(home, "default", Example(text="x"))
    session = make_session()
    code, out = transcript(session, [":add What is SOH? => A hardmask.", ":drop 3", ":undo"], keep_going=True)
    assert out.endswith("> :undo\nerror: that example is no longer in default (was it dropped or edited?) "
                        "[What is SOH? => A hardmask.]\n")
    assert jsonl.load_dataset(home, "default").examples == [soh, Example(text="x")]

    code, out = transcript(session, [":add a => 1", ":add b => 2", ":drop 3", ":undo"])   # its own :drop moves the mark
    assert code == 0 and out.endswith("> :undo\nremoved from default (2 examples left): b => 2\n")

    transcript(session, [":add c => 3"])
    jsonl.remove_example(home, "default", 2)   # another session rewrites the file: equal lines are indistinguishable
    code, out = transcript(session, [":undo", ":undo"], keep_going=True)
    assert out.splitlines()[1].startswith("error: default was rewritten since that example was recorded")
    assert out.splitlines()[1].endswith(" [c => 3]")   # which one: the next :undo goes on to the one before
    assert out.endswith("> :undo\nerror: that example is no longer in default (was it dropped or edited?) [a => 1]\n")  # dropped
    assert [e.output for e in jsonl.load_dataset(home, "default").examples] == ["A hardmask.", "3"]
