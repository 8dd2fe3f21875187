"""What the disk refuses: nothing recorded is lost, nothing is half-written, the session stays whole."""
import pytest

from tests.helpers import logits


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


def state(session):

    from lorachat.adapters import live

    return session.active_adapter, live.loaded_names(session), dict(live.state(session).scales), logits(session)


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


def test_a_file_in_the_way_of_a_folder_is_named(shelved, transcript, tmp_path):
    """mkdir says only "File exists" (or "Not a directory"): the line names the file in the way."""
    (tmp_path / "afile").write_text("")
    code, out = transcript(shelved, [f":export a {tmp_path / 'afile' / 'out'}", f":export a {tmp_path / 'afile' / 'deep' / 'out'}"],
                           keep_going=True)
    assert code == 1 and out.count(f": {tmp_path / 'afile'} is a file, not a folder\n") == 2, out


def test_train_refuses_before_training_when_adapters_cannot_be_written(make_session, transcript, home):
    (home / "adapters").write_text("a file where the folder should be\n")  # unwritable, even for root
    session = make_session()
    session.ui.progress_every = 0  # a line for every step trained
    code, out = transcript(session, [":add q => a", ":train"])
    assert code == 1 and out.endswith(f"> :train\nerror: cannot save adapters: {home / 'adapters'} is not a folder\n")
    assert session.active_adapter is None and "training" not in out


def test_an_adapter_the_disk_refuses_at_the_end_stays_usable_and_can_be_saved_later(make_session, transcript, home, tmp_path, small_file_limit):
    import resource

    from lorachat.adapters import live

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
    live.remove(session, "default")
    assert transcript(session, [":use default", "What is SOH?"])[1].endswith(answer.split("\n", 1)[1])
    assert (tmp_path / "copy" / "adapter_model.safetensors").is_file()
