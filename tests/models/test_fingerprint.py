"""A base model's identity: the same across dtypes and hub snapshots, a real mismatch says what differs."""
from tests.helpers import logits, shelve


def state(session):

    from lorachat.adapters import live

    return session.active_adapter, live.loaded_names(session), dict(live.state(session).scales), logits(session)


def test_adapters_load_across_dtypes_and_a_real_mismatch_says_what_differs(make_session, home, transcript):
    import json
    import shutil

    from lorachat.adapters import live
    from lorachat.models import fingerprint

    full = make_session(dtype="float32")
    shelve(full, ["a"])
    legacy = fingerprint.loaded_fingerprint(full.loaded.model)   # what lorachat stored before weight files were read
    for name, change in (("old", {"base_fingerprint": legacy}),
                         ("other", {"base_fingerprint": "sha256:0123", "base": {"path": "/elsewhere/opt", "config": {"hidden_size": 1024}}})):
        shutil.copytree(home / "adapters" / "a", home / "adapters" / name)
        meta = json.loads((home / "adapters" / name / "lorachat.json").read_text())
        meta = {k: v for k, v in meta.items() if k != "base"} | change
        (home / "adapters" / name / "lorachat.json").write_text(json.dumps(meta))
    for dtype in ("float16", "bfloat16"):
        half = make_session(dtype=dtype)
        code, out = transcript(half, [":use a"])
        assert code == 0 and out.endswith("using adapter 'a'\n") and live.state(half).legacy_fingerprint is None
    code, out = transcript(half, [":use old"])   # bfloat16: the old fingerprint did round to it
    assert code == 0
    code, out = transcript(make_session(dtype="float16"), [":use old", ":use other"], keep_going=True)
    old, other = [line for line in out.splitlines() if line.startswith("error: ")]
    assert old.startswith("error: adapter 'old' was made for base model 'tiny' (sha256:") and "whose fingerprint also depends on the dtype" in old
    assert "the loaded 'tiny' in float16" in old and old.endswith("load the base in the --dtype it was trained in; --force loads it anyway")
    assert "hidden_size 1024 there, 512 here; loaded from /elsewhere/opt there, " in other
    assert transcript(full, [":use old", ":use a"])[0] == 0


def test_a_hub_model_is_fingerprinted_from_its_cached_snapshot(make_session, tmp_path, monkeypatch, tiny_cache):
    import shutil

    import huggingface_hub.constants

    from lorachat.adapters import live

    repo = tmp_path / "hub" / "models--lorachat-test--tiny"
    shutil.copytree(tiny_cache / "tiny-v1", repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = make_session("lorachat-test/tiny", dtype="bfloat16")
    assert hub.loaded.folder == str(repo / "snapshots" / "0123abcd")
    assert live.base_fingerprint(hub) == live.base_fingerprint(make_session(dtype="float32"))
