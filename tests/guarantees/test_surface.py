"""The whole surface: every command, under the default keys, on OPT, Llama (with a chat template)
and GPT-2 models built here: no traceback, no library warning, :compare gives every answer, and a
question still answers at the end."""
import pytest

from tests.helpers import model_dir

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
:history
:clear
:set context=on
What is CMP?
:history
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

    from tests.helpers import environment

    directory = model_dir(tmp_path, arch)
    script = tmp_path / "surface.txt"
    script.write_text(SURFACE.format(export=tmp_path / "exported"))
    run = subprocess.run([sys.executable, "-m", "lorachat", "--model", str(directory), "--home", str(home), "--script", str(script)],
                         capture_output=True, text=True, timeout=900, env=environment())
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "Traceback" not in out and "warn" not in out.lower(), out
    compared = [line for line in out.split("> :compare a b -- What is SiON?\n")[1].split("> :eval")[0].splitlines()
                if not line.startswith("(asked alone")]   # said where a conversation is on (Llama's template)
    assert compared[0::2] == ["[base]", "[a]", "[b]"], out
    last = run.stdout.rsplit("> What is SOH?\n", 1)[1]   # the script's last line: its answer, and nothing after it
    assert last.count("\n") == 1 and not last.startswith("error:"), out
    assert (tmp_path / "exported" / "config.json").is_file()
    assert sorted(p.name for p in (home / "adapters").iterdir()) == ["a", "b", "both", "m-dl", "m-dt", "m-linear", "m-mp", "m-ties"]
