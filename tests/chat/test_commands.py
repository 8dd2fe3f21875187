"""The commands as a user reads them: :help's lines, :examples, :good, :info, :eval's progress, :import's
empty sources."""
import re

import pytest

from tests.helpers import model_dir

QUESTION = "What is SOH?"


def test_import_of_a_source_without_rows_says_no_examples(make_session, transcript, tmp_path):
    session = make_session()
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "header.csv").write_text("instruction,output\n")
    code, out = transcript(session, [f":import {tmp_path / 'empty.json'}", f":import {tmp_path / 'header.csv'}"], keep_going=True)
    assert out.splitlines()[1::2] == [f"error: no examples in {tmp_path / 'empty.json'}",
                                      f"error: no examples in {tmp_path / 'header.csv'}"], out


def test_plain_help_is_one_short_line_per_command_and_each_summary_a_sentence(make_session, transcript):
    from lorachat.chat.commands import COMMANDS

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
    from tests.helpers import write_dataset

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
    assert "> :good\nalready in default as example 1: nothing added\n" in out, out
    assert "dataset default: 1 example\n" in out


def test_good_says_when_the_answer_it_records_was_cut_by_max_new_tokens(make_session, transcript, home):
    """An answer the token limit cut (tiny's random weights never end one in 4 tokens) is recorded
    as shown, with one line saying so: trained on, it would teach the answer to stop there."""
    session = make_session()
    code, out = transcript(session, [":set max_new_tokens=4", QUESTION, ":good"])
    assert code == 0 and session.last_answer_cut == 4, out
    assert out.endswith("the answer was cut at max_new_tokens=4 before it ended, and is recorded so: :undo, then "
                        ":set max_new_tokens=N and ask again for the whole answer, or :fix ANSWER\n"), out
    assert len(session.tokenizer(session.last_answer, add_special_tokens=False)["input_ids"]) <= 4


def test_info_counts_the_base_and_the_loaded_adapters_apart(shelved, transcript):
    def parameters(out):
        return re.search(r"^parameters +(.*)$", out, re.M).group(1)

    before = parameters(transcript(shelved, [":info"])[1])
    after = parameters(transcript(shelved, [":use a", ":use b", ":info"])[1])
    assert re.fullmatch(r"[\d,]+", before) and after.startswith(before + " + ") and after.endswith(" in 2 loaded adapters")
