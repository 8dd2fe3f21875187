"""`lorachat serve`: every saved adapter made for one base model, handed to vLLM's OpenAI-compatible server.

Knows vLLM's rules (preflight.py: which adapters it refuses; here: its command line, checked against
vllm/entrypoints/openai/cli_args.py and its serving models). vLLM loads every --lora-modules adapter
when it starts and does not start when one fails, so anything it would refuse is refused here first,
one line each.
Reads files only (adapter directories; the base model's tokenizer and config, never its weights).
Knows nothing about the REPL: cli.py parses the arguments, prints, and starts vLLM.
"""
import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lorachat.adapters import provenance, travel
from lorachat.core import durable
from lorachat.core.errors import LorachatError
from lorachat.core.prompts import (
    DEFAULT_INSTRUCTION,
    MAX_NEW_TOKENS,
    STOP_MARKER,
    uses_chat_template,
)
from lorachat.models import converted
from lorachat.models.loader import DEFAULT_MODEL
from lorachat.serving import chat_template
from lorachat.serving.preflight import (
    LORA_ARCHITECTURES,
    NO_LORA,
    Served,
    check,
    max_lora_rank,
)

MAX_LORAS = 4       # default GPU slots: each is allocated at --max-lora-rank for every LoRA layer
INSTALL = ("vLLM is not installed here (no `vllm` command on PATH): on a machine with a CUDA GPU, "
           "`pip install vllm` (in its own virtualenv: it brings its own CUDA build of torch), then run this "
           "again; `lorachat serve --dry-run` prints the command without it")


@dataclass(frozen=True)
class ServeOptions:
    """`lorachat serve` arguments (cli.py reads its defaults from here)."""
    model: str = DEFAULT_MODEL
    home: Path = Path(".")
    max_loras: int | None = None      # None: every adapter, at most MAX_LORAS
    max_cpu_loras: int | None = None  # None: every adapter (kept in CPU memory, never reread from disk)
    trust_remote_code: bool = False
    vllm_args: tuple = ()


@dataclass
class Plan:
    options: ServeOptions
    base: str                      # what vLLM loads: the hub id or the model directory
    architecture: str
    served: list = field(default_factory=list)
    left_out: list = field(default_factory=list)   # lines: made for another base
    refused: list = field(default_factory=list)    # lines: what vLLM would reject, and why
    notes: list = field(default_factory=list)
    template: str | None = None    # lorachat's chat template; None: the model's own is used
    takes_system: bool = True      # whether the chat template accepts a system message
    positions: int | None = None   # the most tokens (prompt and answer) the model reads, where its config says


def find_vllm(which=shutil.which) -> str:
    """The `vllm` executable, or one line saying how to install it."""
    found = which("vllm")
    if not found:
        raise LorachatError(INSTALL)
    return found


def plan(options: ServeOptions, files=None, progress=None) -> Plan:
    """What to serve: read the base's tokenizer and config and every adapter directory.
    `files` = (tokenizer, config, source) as models.load_files returns them; `progress(line)` hears
    a first use of smol or a GGUF file being converted."""
    from lorachat.models.loader import load_files

    tokenizer, config, source = files or load_files(options.model, options.trust_remote_code, progress)
    architecture = (getattr(config, "architectures", None) or ["?"])[0]
    result = Plan(options, str(Path(source).resolve()) if Path(source).is_dir() else source, architecture)
    result.positions = next((v for k in ("max_position_embeddings", "n_positions") if isinstance(v := getattr(config, k, None), int)), None)
    made_from = converted.source(source)
    if made_from is not None:   # smol or a GGUF file: vLLM is given the folder lorachat converted it into
        result.notes.append(f"the base is {result.base}, the plain transformers folder lorachat converted "
                            f"{made_from.get('source', 'the GGUF file')} into (vLLM loads it like any model folder)")
    for name, path in adapter_dirs(options.home):
        survey(result, name, path)
    _template(result, tokenizer)
    if architecture not in LORA_ARCHITECTURES and architecture not in NO_LORA:
        result.notes.append(f"vLLM's LoRA support for {architecture} is not known to lorachat: vLLM checks the "
                            f"adapters' target modules when it starts (and does not start if one does not fit)")
    if architecture == "OPTForCausalLM":
        result.notes.append("OPT needs vLLM 0.11 or newer (LoRA for OPT came with vLLM PR 25717, September 2025; "
                            "older releases stop with 'OPTForCausalLM does not support LoRA yet')")
    return result


def adapter_dirs(home: Path) -> list[tuple[str, Path]]:
    """Saved adapters, as the REPL lists them (hidden directories are writes in progress)."""
    try:
        entries = sorted((home / "adapters").iterdir())
    except OSError:
        return []
    return [(p.name, p) for p in entries if p.is_dir() and not p.name.startswith(".")]


def survey(result: Plan, name: str, path: Path) -> None:
    """Serve adapter `name`, or say in one line why it is left out (another base) or refused.
    Its base: lorachat.json's base_model, else adapter_config.json's base_model_name_or_path."""
    meta = provenance.read_meta(path) or {}
    if _foreign(result, name, meta.get("base_model")):
        return
    try:
        config = provenance.read_config(name, path)
        if meta.get("base_model") is None and _foreign(result, name, config.get("base_model_name_or_path") or "?"):
            return
        result.served.append(check(name, path, config, meta, result.architecture))
    except LorachatError as exc:
        result.refused.append(f"refused '{name}': {exc}")


def _foreign(result: Plan, name: str, theirs: str | None) -> bool:
    """Whether base model `theirs` is not the one served (None: not known yet); says so when not."""
    if theirs is None or identity(theirs) == identity(result.options.model):
        return False
    shown = "a base model it does not name" if theirs == "?" else f"base model {theirs!r}"
    result.left_out.append(f"left out '{name}': made for {shown}, not {result.options.model!r}")
    return True


def identity(model: str | None) -> str | None:
    """How a base model is compared: `tiny`, `smol`, directories and files by their resolved path,
    hub ids as written."""
    if not model:
        return None
    if model == "tiny":
        from lorachat.models.tiny import tiny_dir

        return str(tiny_dir().resolve())
    if model == converted.SMOL:
        return str(converted.smol_dir().resolve())
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _template(result: Plan, tokenizer) -> None:
    if not uses_chat_template(tokenizer):
        result.template = chat_template.build(tokenizer)
        chat_template.check(tokenizer, result.template)
        return
    system = [{"role": "system", "content": DEFAULT_INSTRUCTION}, {"role": "user", "content": "?"}]
    try:  # the same try as prompts.render_prompt: a template without a system role gets it folded in
        tokenizer.apply_chat_template(system, tokenize=False, add_generation_prompt=True)
    except Exception:
        result.takes_system = False


def slots(result: Plan) -> tuple[int, int]:
    """(--max-loras, --max-cpu-loras): the options, or every adapter (GPU slots at most MAX_LORAS)."""
    count = len(result.served)
    gpu = result.options.max_loras or min(count, MAX_LORAS)
    cpu = result.options.max_cpu_loras or max(count, gpu)
    if cpu < gpu:
        raise LorachatError(f"--max-cpu-loras ({cpu}) must be at least --max-loras ({gpu}): vLLM refuses less")
    return gpu, cpu


def template_path(options: ServeOptions) -> Path:
    """Where the chat template for this base is written: the workspace's serve/ folder."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", options.model).strip("-.") or "model"
    return (options.home / "serve" / f"{slug}.jinja").resolve()


def command(result: Plan) -> list[str]:
    """The `vllm serve` argv for the served adapters (none: the base model alone)."""
    argv = ["vllm", "serve", result.base]
    if result.served:
        gpu, cpu = slots(result)
        argv += ["--enable-lora", "--lora-modules", *(lora_module(a.name, a.path, result.base) for a in result.served),
                 "--max-lora-rank", str(max_lora_rank(a.rank for a in result.served)),
                 "--max-loras", str(gpu), "--max-cpu-loras", str(cpu)]
    # the REPL passes every generation setting itself; vLLM would otherwise apply the model's
    # generation_config.json (a repetition_penalty there, say) to every request
    argv += ["--generation-config", "vllm"]
    if result.template is not None:
        argv += ["--chat-template", str(template_path(result.options))]
    if result.options.trust_remote_code:
        argv.append("--trust-remote-code")
    return argv + list(result.options.vllm_args)


def lora_module(name: str, path: Path, base: str) -> str:
    """vLLM's `name=path`, or its JSON form where either holds '=' or ',' (which `name=path` cannot)."""
    if any(c in f"{name}{path}" for c in "=,"):
        return json.dumps({"name": name, "path": str(path), "base_model_name": base})
    return f"{name}={path}"


def write_template(result: Plan) -> Path | None:
    if result.template is None:
        return None
    path = template_path(result.options)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LorachatError(f"could not write the chat template into {path.parent}: {exc.strerror or exc}") from None
    durable.replace_file(path, (result.template + "\n").encode("utf-8"), failed=f"could not write {path}")
    return path


def request(result: Plan, adapter: Served) -> dict:
    """What a client sends to /v1/chat/completions to get the REPL's answer from `adapter`: the
    messages prompts.render_prompt would render (placeholders QUESTION and, where the adapter's
    examples were asked under several instructions, INSTRUCTION), lorachat's stop rule and length."""
    instruction = "INSTRUCTION" if adapter.instruction is None else adapter.instruction
    system = [{"role": "system", "content": instruction}]
    user = [{"role": "user", "content": "QUESTION"}]
    if result.template is None and not instruction:  # render_prompt sends no system turn then
        system = []
    elif result.template is None and not result.takes_system:  # render_prompt folds it into the question
        system, user = [], [{"role": "user", "content": f"{instruction}\n\nQUESTION"}]
    return {"model": adapter.name, "messages": system + user, "stop": [STOP_MARKER],
            "max_tokens": adapter.max_tokens, "temperature": 0}


def report(result: Plan) -> list[str]:
    """Lines for the user: what is served, left out, refused, and what each client must send."""
    own = "lorachat's prompt as its chat template" if result.template is not None else "its own chat template"
    lines = [f"base model {result.options.model} ({result.architecture}), served with {own}"]
    for a in result.served:
        lines.append(f"serve '{a.name}': r={a.rank}" + (f" ({a.origin})" if a.origin else ""))
        lines.append(f"  {travel.gate_line(a.name, provenance.read_meta(a.path))}")
    lines += result.left_out + result.refused + [f"note: {n}" for n in result.notes]
    served = result.served
    if not served:  # vLLM serves the base under the name it was given
        lines.append(f"no adapter to serve: the base model alone, as {result.base!r}")
        served = [Served(result.base, Path(result.base), 0, DEFAULT_INSTRUCTION, MAX_NEW_TOKENS)]
    lines.append("to get the REPL's answer, a client POSTs to /v1/chat/completions (QUESTION: the question; "
                 "the answer: the returned text stripped of surrounding white space):")
    for a in served:
        lines.append(f"  {json.dumps(request(result, a), ensure_ascii=False)}")
        if a.instruction is None:
            lines.append(f"    ('{a.name}' was taught under several instructions: INSTRUCTION is the question's own)")
    if result.template is None:
        lines.append("  (the model's own template does not strip: send instruction and question without "
                     "surrounding white space)")
    if result.positions:
        lines.append(f"  (prompt + answer <= {result.positions} tokens, the model's positions: for a prompt of more "
                     f"than {result.positions} - max_tokens tokens send max_tokens = {result.positions} - its tokens, "
                     "as the REPL shortens its answer; vLLM refuses a request past them)")
    return lines


def shown(argv: list[str]) -> str:
    """The command as one copy-pasteable shell line."""
    return shlex.join(argv)
