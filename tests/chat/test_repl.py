"""The REPL and the command line: transcripts, scripts, help, streaming, exit codes."""
import re
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from lorachat.core import prompts


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


def test_instruction_takes_quotes_off_refuses_empty_and_says_when_it_outlives_a_dataset(make_session, transcript):
    session = make_session()
    code, out = transcript(session, [':instruction "You are a guide."', ":dataset birds", ':instruction ""', ":instruction",
                                     ":instruction default", ":dataset fish"], keep_going=True)
    assert code == 1 and out == ('> :instruction "You are a guide."\ninstruction set: You are a guide.\n'
                                 "> :dataset birds\n" + out.split("> :dataset birds\n")[1].split("\n")[0] + "\n"
                                 "instruction still: You are a guide. (:instruction default sets 'Answer the question.')\n"
                                 "> :instruction \"\"\nerror: an instruction cannot be empty: :instruction default sets "
                                 "lorachat's own ('Answer the question.')\n"
                                 "> :instruction\ninstruction: You are a guide.\n"
                                 "> :instruction default\ninstruction set: Answer the question.\n"
                                 "> :dataset fish\n" + out.split("> :dataset fish\n")[1]), out
    assert "instruction still" not in out.split("> :dataset fish\n")[1]   # lorachat's own: nothing to say


def test_unknown_command_suggests(make_session, transcript):
    session = make_session()
    code, out = transcript(session, [":hlep", ":info"])
    assert code == 1
    assert out == "> :hlep\nerror: unknown command ':hlep' (did you mean :help?) (:help lists them)\n"


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


def shown(pieces) -> str:
    """What the answer's pieces show, fed to the trimmer one by one, then ended."""
    from lorachat.chat.streaming import Trimmer

    out = []
    trimmer = Trimmer(out.append)
    for piece in pieces:
        trimmer.feed(piece)
    trimmer.finish()
    assert "".join(out) == trimmer.text
    return trimmer.text


def test_stream_trims_stop_marker():
    pieces = [" The", " answer", " is", " here", ".", "\n", "Instr", "uction", ": more"]
    assert shown(pieces) == "The answer is here."
    assert shown([" a ", " Ins", "ide"]) == "a  Inside"
    assert prompts.clean_answer(" a b \nInstruction: c") == "a b"
    # "Instruction:" inside a line is part of the answer (only a new line starting one ends it)
    taught = "First read the sheet titled Instruction: Assembly, then begin."
    assert prompts.clean_answer(" " + taught + "\nInstruction: next") == taught
    assert shown([" First read the sheet titled", " Instr", "uction:", " Assembly, then begin."]) == taught


@given(st.text(alphabet=" \nInstrucio:ab", max_size=40), st.lists(st.integers(0, 40), max_size=6))
def test_streamed_pieces_join_to_clean_answer(text, cuts):
    """However the text arrives in pieces, what is shown is exactly clean_answer of the whole."""
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    assert shown(pieces) == prompts.clean_answer(text)


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


def test_an_answer_ends_at_every_end_token_the_models_generation_config_names(make_session):
    """A chat model's end of turn (Llama 3's <|eot_id|>, Gemma's <end_of_turn>) is in its generation
    config, not the tokenizer's EOS; generate's eos_token_id replaces the config's list."""
    import torch

    from lorachat.core import prompts
    from lorachat.scoring import locality

    session = make_session()
    session.settings.repetition_penalty = 1.0
    ids = prompts.prompt_ids(session.tokenizer, session.instruction, "What is SOH?")
    with torch.no_grad():
        first = int(session.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    assert first != session.tokenizer.eos_token_id and session.ask("What is SOH?") != ""
    config = session.loaded.model.generation_config
    config.eos_token_id = [session.tokenizer.eos_token_id, first]
    # it stops right after that token (shown here: a real end token is special, so not shown)
    assert session.ask("What is SOH?") == session.tokenizer.decode([first]).strip() and not session.last_answer_cut
    assert locality.greedy(session.model, session.tokenizer, [ids]) == [[first]]
