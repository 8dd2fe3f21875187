"""`:train [NAME] [key=value ...]`: a new LoRA adapter on the current dataset, trained in-process.

Turns words into a TrainConfig, shows progress, saves and activates the result, and keeps the
session whole when training is cancelled (Ctrl-C) or fails. The maths is train.py's, adapter
files and PEFT state are adapters.py's, example files datasets.py's.
"""
import contextlib
import dataclasses
import math
import signal
import threading

from lorachat import adapters, batches, distributed, locality, options, prompts, saving, shape, train
from lorachat.commands import command
from lorachat.errors import LorachatError


def _details(session):
    session.ui.table(["key", "default", "meaning"], [list(row) for row in options.describe(train.DEFAULTS)])


def _complete(session):
    return [f"{f.name}=" for f in dataclasses.fields(train.DEFAULTS)]


@command("train", usage=":train [NAME] [key=value ...]", details=_details, complete=_complete)
def train_(session, args):
    """Train a new LoRA adapter on the current dataset, save it to adapters/NAME and make it active.

    :train                    named after the dataset (then NAME-2, NAME-3, ...), default keys
    :train soh r=8 lr=1e-3    a name and some keys (every key below)
    :train until=steps steps=200     run all 200 steps instead of stopping once every answer is known
    Training stops as soon as every example's answer comes back verbatim (until=recall).
    Ctrl-C stops at the next step: the adapter is discarded (keep=partial saves it), the session goes on.
    """
    name, config = _parse(session, args)
    config = train.resolved(session.model, config)
    examples = _examples(session)
    lora_config = shape.lora_config(session.model, config)
    encoded = batches.encode(session.tokenizer, examples, train.max_tokens(session.model, config))
    if not encoded.items:  # refuse before creating anything
        raise LorachatError(train.no_examples(encoded, session.model))
    saving.check_writable(session)  # an adapter that could not be saved would be lost: say so before training
    anchors, probes = _references(session, config)
    previous, unsaved, kept = session.active_adapter, None, None
    adapters.make_room(session, keep={previous})
    with _deferred_interrupt((signal.SIGINT, signal.SIGTERM) if session.headless else (signal.SIGINT,)) as interrupted:
        shape.seeded_add(config.seed, lambda: adapters.add_new(session, name, lora_config))
        try:
            # FSDP shards the weights the decoding merge reads: checks then run through PEFT's own layers
            with adapters.switch(session).unmerged() if distributed.sharded() else contextlib.nullcontext():
                result = _run(session, name, encoded, config, interrupted, anchors)
            if result.cancelled and config.keep != "partial":
                _discard(session, name, previous)
            else:
                adapters.activate(session, name)
                kept = locality.score(session.model, session.tokenizer, probes) if probes else None
                if distributed.is_main():  # the other ranks of `lorachat train` hold the same weights
                    unsaved = _save_or_keep(session, name, _meta(session, encoded, config, result, kept), result.state)
                distributed.barrier()
                adapters.make_room(session, keep={name}, extra=0)
        except BaseException:
            _discard(session, name, previous)
            raise
    _report(session, name, result, config, kept)
    if unsaved is not None:
        raise unsaved


def _references(session, config):
    """The base's own answers (cached for the session): to the anchor questions training rehearses,
    and to the first `config.probes` built-in probes the final line measures on (main process only)."""
    anchors = None
    if config.anchors or config.keep_base:
        anchors = locality.session_reference(session, locality.anchor_questions(session.instruction, config.anchor_pool),
                                             locality.LocalityOptions(max_new_tokens=config.anchor_tokens))
    probes = None
    if config.probes and distributed.is_main():
        questions = locality.probe_questions(session, questions=locality.builtin(locality.PROBES)[:config.probes])
        probes = locality.session_reference(session, questions)
    return anchors, probes


def _parse(session, args) -> tuple[str, train.TrainConfig]:
    positional, pairs = options.split_kv(options.split_words(args))
    if len(positional) > 1:
        raise LorachatError(f":train takes at most one NAME (got {positional[1][:40]!r}); usage: :train [NAME] [key=value ...]")
    config = options.apply_kv(train.DEFAULTS, pairs)
    shape.check_targets_text(config.targets)
    if positional:
        name = adapters.check_loadable_name(positional[0])
        if name in adapters.known_names(session) or adapters.adapter_path(session, name).exists():
            raise LorachatError(f"an adapter named '{name}' already exists (choose another name, or :delete {name})")
        return name, config
    return _free_name(session, session.dataset), config


def _free_name(session, stem: str) -> str:
    """The dataset's name, else NAME-2, NAME-3 ... : the first one neither saved nor loaded."""
    stem = stem.replace(".", "-")
    taken = {n.lower() for n in adapters.known_names(session)} | {adapters.BASE}
    for number in range(1, 10_000):
        candidate = stem if number == 1 else f"{stem}-{number}"
        if candidate.lower() not in taken and not adapters.adapter_path(session, candidate).exists():
            try:
                return adapters.check_loadable_name(candidate)
            except LorachatError:
                continue   # a name PEFT cannot hold ('items'): the next one
    raise LorachatError(f"no free adapter name after '{stem}': give one, :train NAME")


def _examples(session):
    from lorachat.datasets import load_dataset

    dataset = load_dataset(session.home, session.dataset)
    if dataset.bad_lines:
        session.ui.note(f"dataset '{session.dataset}': skipping invalid lines ({dataset.describe_problems()})")
    if not dataset.examples:
        raise LorachatError(f"dataset '{session.dataset}' has no examples yet: :add QUESTION => ANSWER first")
    return dataset.examples


def _run(session, name, encoded, config, interrupted, anchors):
    total = train.planned_steps(len(encoded.items), config, distributed.world())
    # until=recall may stop long before the planned steps: the bar says so, its time left is the most
    label = f"training {name}" + (" (stops once every answer is known)" if config.until == "recall" else "")
    with session.ui.progress(label, total) as update:
        def on_step(step, steps, loss, known, kept):
            update(step, loss=f"{loss:.2f}", recall=f"~{known}/{len(encoded.items)}",
                   kept=None if kept is None else f"{kept:.0%}")

        return train.run(session.model, session.tokenizer, encoded, config, on_step=on_step,
                         should_stop=interrupted.is_set, asking=session.asking(), anchors=anchors)


def _save_or_keep(session, name, meta, state=None) -> LorachatError | None:
    """Save the trained adapter; when the disk refuses even so, keep it in memory, usable and marked
    unsaved, and return the line that says how to save it."""
    try:
        saving.save(session, name, meta, state=state)
        return None
    except LorachatError as exc:
        saving.keep_unsaved(session, name, meta)
        if session.headless:  # `lorachat train` ends with this line: there is no later to save in
            return LorachatError(f"{exc}; the trained adapter is lost with this process: make adapters/ writable and train again")
        return LorachatError(f"{exc}; '{name}' is kept in memory, unsaved (and is lost when the session ends): "
                             f":save {name} once adapters/ can be written, or :save {name} DIR")


def _discard(session, name, previous) -> None:
    """The new adapter out of memory, the previously active one back: as before :train."""
    adapters.remove(session, name)
    if previous in adapters.loaded_names(session):
        adapters.activate(session, previous)
    else:
        adapters.activate(session, None)


def _meta(session, encoded, config, result, kept) -> dict:
    examples = encoded.examples
    return dict(dataset=session.dataset, examples=len(examples), skipped=result.skipped,
                records_sha256=train.records_sha256(examples), instruction=prompts.shared_instruction(examples),
                max_answer_tokens=result.max_answer_tokens, train=dataclasses.asdict(config), steps=result.steps,
                loss=result.loss if math.isfinite(result.loss) else None, recall=result.recall, tokens=result.tokens,
                total=result.total, seconds=round(result.seconds, 3), cancelled=result.cancelled,
                world_size=result.world, global_batch=config.batch * config.grad_accum * result.world,
                kept=None if kept is None else round(kept.kept, 4), agree=None if kept is None else round(kept.agreement, 4),
                probes=None if kept is None else kept.questions)


def _report(session, name, result, config, kept=None) -> None:
    share = f"kept {kept.kept:.0%} of base answers, " if kept is not None else ""
    summary = (f"{result.steps} steps, loss {result.loss:.2f}, recall {result.recall}/{result.total}, {share}"
               f"{result.seconds:.1f} s")
    skipped = (f" ({result.skipped} example{'s' if result.skipped != 1 else ''} longer than "
               f"{train.describe_limit(result.limit, session.model)} skipped)") if result.skipped else ""
    if not result.cancelled:
        session.ui.line(f"trained {name}: {summary} — now active{skipped}")
    elif config.keep == "partial":
        session.ui.line(f"stopped {name} (Ctrl-C), kept as it was: {summary} — now active{skipped}")
    elif session.ui.interactive:
        session.ui.note(f"stopped training {name} after {result.steps} steps (Ctrl-C): discarded (keep=partial keeps it)")
        return
    else:  # a script should not carry on as if the adapter existed
        raise LorachatError(f"training {name} stopped (Ctrl-C or SIGTERM) after {result.steps} steps: discarded")
    for note in result.notes:
        session.ui.note(note)
    for reason in result.reasons:
        session.ui.note(f"not recalled as asked: {reason}")
    if result.known < result.examples and not result.cancelled and config.until == "recall":
        session.ui.note(f"not every answer was learned ({result.known}/{result.examples} after {result.steps} steps): "
                        f"train longer (steps=), with a lower lr (lr={result.lr / 2:g}) or a larger r (r={config.r * 2})")


@contextlib.contextmanager
def _deferred_interrupt(signals=(signal.SIGINT,)):
    """The first Ctrl-C (or another of `signals`: SIGTERM under `lorachat train`) sets the event
    (training stops at the next step boundary, on every rank, and saving is not cut short); a
    second one raises KeyboardInterrupt at once. Outside the main thread signals cannot be caught:
    KeyboardInterrupt then stops training inside train.run."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = {number: signal.signal(number, handler) for number in signals}
    try:
        yield event
    finally:
        for number, earlier in previous.items():
            signal.signal(number, earlier)
