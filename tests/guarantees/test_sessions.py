"""Two sessions, one workspace: the adapter a session holds in memory under a name and the folder
adapters/NAME are never taken for each other, and a clash never costs either adapter."""
import contextlib
import hashlib
import shutil

import torch

from lorachat.adapters import live
from lorachat.chat.ui import PlainUI
from tests.helpers import logits

KEYS = "until=steps steps=3 probes=0 anchors=0"


def digest(folder) -> str:
    """Every file of an adapter folder, names and bytes."""
    total = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        total.update(path.name.encode() + path.read_bytes())
    return total.hexdigest()


class Landing(PlainUI):
    """A terminal under which, at the first progress step of :train, `land()` runs: another session's
    adapter arriving in the workspace while this one trains."""

    def __init__(self, out, land):
        super().__init__(out, progress_every=3600)
        self.land = land

    @contextlib.contextmanager
    def progress(self, description, total):
        with super().progress(description, total) as update:
            def step(number, **fields):
                if self.land is not None:
                    self.land()
                    self.land = None
                update(number, **fields)

            yield update if self.land is None else step


def ranks(rows) -> list[tuple]:
    """(active mark, name, r) of :adapters rows."""
    return [tuple(row.split()[:3]) if row.startswith("*") else ("", *row.split()[:2]) for row in rows]


def other_session(make_session, transcript, tmp_path):
    """Session B, in its own workspace: 'default' (r=4) taught another fact; its folder and logits."""
    other = make_session(workspace=tmp_path / "other")
    (tmp_path / "other").mkdir(exist_ok=True)
    code, out = transcript(other, [":add What is CMP? => Polishing.", f":train default r=4 {KEYS}"])
    assert code == 0, out
    return tmp_path / "other" / "adapters" / "default", logits(other)


def test_an_adapter_that_lands_under_the_same_name_while_training_costs_neither(make_session, transcript, home, tmp_path):
    theirs, their_logits = other_session(make_session, transcript, tmp_path)
    before = digest(theirs)
    session = make_session()
    session.ui = Landing(session.out, lambda: shutil.copytree(theirs, home / "adapters" / "default"))
    code, out = transcript(session, [":add What is SOH? => A hardmask.", f":train r=8 {KEYS}"])
    assert code == 0, out
    assert ("adapters/default was taken by another adapter while this one trained (another session, or a folder "
            "moved in): saved this one as 'default-2'; adapters/default is left as it is") in out
    assert "trained default-2: 3 steps" in out
    assert session.active_adapter == "default-2" and live.loaded_names(session) == ["default-2"]
    mine = logits(session)
    assert digest(home / "adapters" / "default") == before
    assert ranks(transcript(session, [":adapters"])[1].splitlines()[2:]) == [("", "default", "4"), ("*", "default-2", "8")]
    code, out = transcript(session, [":use default"])
    assert code == 0 and torch.equal(logits(session), their_logits)
    code, out = transcript(session, [":use default-2"])
    assert code == 0 and torch.equal(logits(session), mine)
    code, out = transcript(session, [":rename default theirs", ":delete default-2 yes", ":use theirs"])
    assert code == 0, out
    weights = "adapter_model.safetensors"
    assert torch.equal(logits(session), their_logits)
    assert (home / "adapters" / "theirs" / weights).read_bytes() == (theirs / weights).read_bytes()


def test_a_folder_replaced_under_a_loaded_adapter_is_never_taken_for_it(make_session, transcript, home, tmp_path):
    theirs, their_logits = other_session(make_session, transcript, tmp_path)
    before = digest(theirs)
    session = make_session()
    code, out = transcript(session, [":add What is SOH? => A hardmask.", f":train r=8 {KEYS}"])
    assert code == 0 and session.active_adapter == "default", out
    mine = logits(session)
    shutil.rmtree(home / "adapters" / "default")      # another session deletes it and saves its own,
    shutil.copytree(theirs, home / "adapters" / "default")   # or a folder is moved in over it
    code, out = transcript(session, [":adapters", ":use default", ":rename default mine", ":delete default yes"],
                           keep_going=True)
    clash = ("adapters/default holds another adapter than the 'default' this session has loaded (another session "
             "wrote it, or it was moved in): :save default keeps this session's as 'default-2'; nothing was changed")
    assert code == 1 and out.count(f"error: {clash}") == 3, out
    lines = out.splitlines()
    assert ranks(lines[2:4]) == [("", "default", "4"), ("*", "default", "8")]
    assert lines[3].endswith(" unsaved") and lines[4] == f"note: {clash.removesuffix('; nothing was changed')}"
    assert digest(home / "adapters" / "default") == before and not (home / "adapters" / "mine").exists()
    assert session.active_adapter == "default" and torch.equal(logits(session), mine)
    code, out = transcript(session, [":save default"])
    assert code == 0 and out.endswith(f"saved adapter 'default' as 'default-2' (adapters/default holds another "
                                      f"adapter), to {home / 'adapters' / 'default-2'}\n"), out
    assert session.active_adapter == "default-2" and torch.equal(logits(session), mine)
    code, out = transcript(session, [":use default"])
    assert code == 0 and torch.equal(logits(session), their_logits) and digest(home / "adapters" / "default") == before


def test_a_loaded_adapter_whose_folder_another_session_deleted_can_be_saved_again(make_session, transcript, home):
    """Another session's :delete (or a move) takes the folder away: this session's adapter is then only
    in memory, listed unsaved, and :save writes it back, bit for bit."""
    session = make_session()
    code, out = transcript(session, [":add What is SOH? => A hardmask.", f":train y r=8 {KEYS}"])
    assert code == 0 and session.active_adapter == "y", out
    mine = logits(session)
    code, out = transcript(make_session(workspace=home), [":delete y yes"])
    assert code == 0 and not (home / "adapters" / "y").exists(), out
    code, out = transcript(session, [":adapters", ":save y"])
    assert code == 0, out
    (row,) = [r for r in out.splitlines() if r.startswith("*")]
    assert ranks([row]) == [("*", "y", "8")] and row.endswith(" unsaved") and "no lorachat.json" not in row, out
    assert out.endswith(f"saved adapter 'y' to {home / 'adapters' / 'y'}\n"), out
    later = make_session(workspace=home)
    code, out = transcript(later, [":use y"])
    assert code == 0 and torch.equal(logits(later), mine), out
