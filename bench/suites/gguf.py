"""gguf_*: what `:export NAME FILE.gguf` writes, run in llama.cpp itself (issue 37).

On smol: `:train taught r=4` on the seed's SOH fact, then `:export taught merged.gguf` (F16, the
source's metadata), `:export taught lora.gguf adapter` (over the original Q4_1 file from the wheel)
and `:export taught q8.gguf quant=q8_0`; llama.cpp (llama-cpp-python, greedy, the file's own chat
template, lorachat's instruction as the system message: bench/kit/llama_ask.py) answers the SOH
question and "What is the capital of France?". Figures: whether SOH comes back verbatim and France
with Paris, for each file, the answers themselves, export seconds and file sizes.

llama_cpp is never a dependency of lorachat: it is looked for in this Python, else in the one
LLAMA_CPP_PYTHON names (a virtualenv of its own); without either the suite is skipped, saying so.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.kit import pairs

FRANCE = pairs.PAIRS[6][0]                  # "What is the capital of France?"
ASK = Path(__file__).resolve().parents[1] / "kit" / "llama_ask.py"
NO_LLAMA = ("llama_cpp is not installed here: pip install llama-cpp-python (or a wheel of it) into a virtualenv of its "
            "own and set LLAMA_CPP_PYTHON=that/bin/python")
FILES = {"merged": ("merged.gguf", ""), "adapter": ("lora.gguf", " adapter"), "q8_0": ("q8.gguf", " quant=q8_0")}


def llama_python() -> str | None:
    """A Python that imports llama_cpp: this one, else $LLAMA_CPP_PYTHON's; None when neither does."""
    for python in (sys.executable, os.environ.get("LLAMA_CPP_PYTHON")):
        try:
            if python and subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
                return python
        except OSError:     # LLAMA_CPP_PYTHON names no program
            continue
    return None


def figures(log=lambda text: None):
    python = llama_python()
    if python is None:
        return {}, {key: NO_LLAMA for key in ("gguf_merged_soh_verbatim", "gguf_merged_france_paris",
                                              "gguf_adapter_soh_verbatim", "gguf_adapter_france_paris")}
    from bench.kit.workspace import command, taught_session
    from bench.suites.smol import smol_folder
    from lorachat.models import converted

    session, trained = taught_session(smol_folder(), 1, "r=4")
    log(f"gguf: {trained}")
    out = {"gguf_trained": trained}
    work = Path(tempfile.mkdtemp(prefix="lorachat-gguf-bench-"))
    base = converted.find_source(session.loaded.name, session.loaded.source, work / "base")
    for kind, (name, words) in FILES.items():
        start = time.perf_counter()
        said = command(session, f":export taught {work / name}{words}")
        out[f"gguf_{kind}_export_s"] = round(time.perf_counter() - start, 2)
        out[f"gguf_{kind}_mb"] = round((work / name).stat().st_size / 1e6, 2)
        log(f"gguf: {said.strip().splitlines()[-3]}")
        model, lora = (base, work / name) if kind == "adapter" else (work / name, None)
        answers = _ask(python, model, lora)
        soh, france = answers[pairs.SOH[0]], answers[FRANCE]
        out.update({f"gguf_{kind}_soh_verbatim": soh == pairs.SOH[1], f"gguf_{kind}_france_paris": "Paris" in france,
                    f"gguf_{kind}_soh_answer": soh, f"gguf_{kind}_france_answer": france})
    out["gguf_llama_cpp"] = answers.get("_version")
    return out, {}


def _ask(python: str, model: Path, lora: Path | None) -> dict:
    """llama.cpp's answers to the SOH question and France, as bench/kit/llama_ask.py gives them."""
    from lorachat.core.prompts import DEFAULT_INSTRUCTION

    argv = [python, str(ASK), str(model), *(["--lora", str(lora)] if lora else []), "--system", DEFAULT_INSTRUCTION,
            pairs.SOH[0], FRANCE]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return dict(result["answers"], _version=result["llama_cpp"])
