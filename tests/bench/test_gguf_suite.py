"""The gguf bench suite without llama.cpp (never a dependency of lorachat, and absent in CI): skipped,
each of its targets saying why and how to get it, before anything is trained or written."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_without_llama_cpp_the_gguf_suite_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("LLAMA_CPP_PYTHON", "/nonexistent/python")
    from bench.kit import goals
    from bench.suites import gguf

    if gguf.llama_python() is not None:   # this Python has llama_cpp: nothing to skip
        return
    figures, skipped = gguf.figures()
    assert figures == {} and set(skipped) == {"gguf_merged_soh_verbatim", "gguf_merged_france_paris",
                                              "gguf_adapter_soh_verbatim", "gguf_adapter_france_paris"}
    assert all(reason.startswith("llama_cpp is not installed here") and "LLAMA_CPP_PYTHON" in reason
               for reason in skipped.values())
    rows = {row["figure"]: row["met"] for row in goals.check(figures, skipped)}
    assert rows["gguf_merged_soh_verbatim"] == "skipped" and rows["gguf_adapter_france_paris"] == "skipped"
