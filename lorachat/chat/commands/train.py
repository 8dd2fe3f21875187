"""`:train [NAME] [key=value ...]`: a new LoRA adapter on the current dataset, trained in-process.

Turns words into a TrainConfig and a training Plan, shows progress, saves and activates the
result, and keeps the session whole when training is cancelled (Ctrl-C) or fails. The maths is
training/'s, adapter files and PEFT state are adapters/'s, example files lessons/'s.
"""
import contextlib
import dataclasses
import math
import signal
import threading
import time
from pathlib import Path

from lorachat.adapters import disk, gate, live, paths, side_by_side, steering, travel
from lorachat.chat import options
from lorachat.chat.commands import command
from lorachat.core import launch, prompts
from lorachat.core.errors import LorachatError
from lorachat.scoring import locality
from lorachat.training import lora, planning, recipe, trainer


def _details(session):
    rows = [list(row) for row in options.describe(recipe.DEFAULTS)]
    try:  # the default targets by the names the loaded model gives them (up_proj, c_fc ...)
        used = lora.lora_config(session.model, recipe.resolved(session.model, recipe.DEFAULTS)).target_modules
    except LorachatError:
        used = None
    if isinstance(used, (set, list)) and sorted(used) != [recipe.DEFAULTS.targets]:
        for row in rows:
            if row[0] == "targets":
                row[1:] = [",".join(sorted(used)), f"{row[2]} (the default, {recipe.DEFAULTS.targets} in OPT's names, is "
                                                   f"{','.join(sorted(used))} on this model)"]
    session.ui.table(["key", "default", "meaning"], rows)


def _complete(session):
    return [f"{f.name}=" for f in dataclasses.fields(recipe.DEFAULTS)]


@command("train", usage=":train [NAME] [key=value ...]", details=_details, complete=_complete)
def train_(session, args):
    """Train a new LoRA adapter on the current dataset, save it to adapters/NAME and make it active.

    :train                    named after the dataset (then NAME-2, NAME-3, ...), default keys
    :train soh r=8 lr=1e-3    a name and some keys (every key below)
    :train until=steps steps=200     run all 200 steps instead of stopping once every answer is known
    Training stops as soon as every example's answer comes back verbatim (until=recall).
    Ctrl-C stops at the next step: the adapter is discarded (keep=partial saves it), the session goes on.
    """
    began = time.perf_counter()   # the final line's time: from Enter to the next prompt
    name, config = _parse(session, args)
    # worked out once, before anything is created: a refusal leaves the session as it was
    plan = planning.plan(session.model, session.tokenizer, _examples(session), config, launch.world())
    config = plan.config
    lora_config = lora.lora_config(session.model, config)
    disk.check_writable(session)  # an adapter that could not be saved would be lost: say so before training
    anchors, probes = _references(session, config)
    if anchors is not None:   # the anchors with the base's answers are also the conversations questions come after
        plan = planning.in_context(session.model, session.tokenizer, plan, _turns(session, config, anchors))
    previous, unsaved, kept, ungated, nots = session.active_adapter, None, None, None, []
    live.make_room(session, keep={previous})
    with _deferred_interrupt((signal.SIGINT, signal.SIGTERM) if session.headless else (signal.SIGINT,)) as interrupted:
        lora.seeded_add(config.seed, lambda: live.add_new(session, name, lora_config))
        try:
            # FSDP shards the weights the decoding merge reads: checks then run through PEFT's own layers
            with live.switch(session).unmerged() if launch.sharded() else contextlib.nullcontext():
                result = _run(session, name, plan, interrupted, anchors)
            if result.cancelled and config.keep != "partial":
                _discard(session, name, previous)
            else:
                live.activate(session, name)
                taught = gate.taught_keys(plan.examples)
                nots = steering.carried(session, previous, taught)   # :unroute's, for answers taught again
                gate.remember(session, name, taught, nots)
                kept = gate.kept(session, name, *probes) if probes else None
                ungated = _ungated(session, probes[1]) if recipe.travels(config) and probes else None
                if launch.is_main():  # the other ranks of `lorachat train` hold the same weights
                    meta = dict(_meta(session, plan, result, kept), **({"ungated": ungated} if ungated else {}),
                                **({"not_keys": nots} if nots else {}))
                    unsaved, name = _save_or_keep(session, name, meta, result.state)
                launch.barrier()
                live.make_room(session, keep={name}, extra=0)
        except BaseException:
            _discard(session, name, previous)
            raise
    _report(session, name, result, config, kept, _stopped_by(interrupted), time.perf_counter() - began)
    if nots and not result.cancelled:
        session.ui.note(f"{len(nots)} question{'s' if len(nots) != 1 else ''} sent back to the base on '{previous}' "
                        f"(:unroute) stay{'s' if len(nots) == 1 else ''} the base's")
    if ungated:
        session.ui.note(f"ungated, as :export, lorachat serve and a GGUF export serve it: {', '.join(travel.described(ungated))}")
        advice = travel.shorter(dataclasses.asdict(config), ungated)
        if advice:
            session.ui.note(advice)
    if unsaved is not None:
        raise unsaved


def _ungated(session, ref) -> dict:
    """What the active (new) adapter does to every question, no gate: kept and agree on the probes'
    base answers `ref`, and its whole answers against the base's (the record :eval gate=off writes)."""
    scored = locality.score(session.model, session.tokenizer, ref)
    return side_by_side.ungated_record(scored, side_by_side.whole_answers(session, min(scored.questions, locality.LENGTH_PROBES)))


def _references(session, config):
    """The base's own answers (cached for the session): to the anchor questions training rehearses,
    and to the first `config.probes` built-in probes the final line measures on (main process only:
    (the questions, their Reference))."""
    anchors = None
    if config.anchors or config.keep_base or config.context or config.null_space:
        anchors = side_by_side.session_reference(session, locality.anchor_questions(session.instruction, config.anchor_pool),
                                             locality.LocalityOptions(max_new_tokens=config.anchor_tokens))
    probes = None
    if config.probes and launch.is_main():
        questions = side_by_side.probe_questions(session, questions=locality.builtin(locality.PROBES)[:config.probes])
        probes = [q for _, q in questions], side_by_side.session_reference(session, questions)
    return anchors, probes


def _turns(session, config, anchors) -> list[tuple[str, str]]:
    """The anchor questions with the base's answers, as turns of a conversation (the answers as shown)."""
    questions = [q for _, q in locality.anchor_questions(session.instruction, config.anchor_pool)]
    return locality.as_turns(session.tokenizer, questions, anchors)


def parse(args: str) -> tuple[str | None, recipe.TrainConfig]:
    """`:train`'s words -> (NAME or None, the config): every check that needs neither the model nor
    the workspace (`lorachat train` makes them before it loads the model)."""
    positional, pairs = options.split_kv(options.split_words(args))
    if len(positional) > 1:
        raise LorachatError(f":train takes at most one NAME (got {positional[1][:40]!r}); usage: :train [NAME] [key=value ...]")
    config = options.apply_kv(recipe.DEFAULTS, pairs)
    lora.check_targets_text(config.targets)
    return (paths.check_loadable_name(positional[0]) if positional else None), config


def _parse(session, args) -> tuple[str, recipe.TrainConfig]:
    name, config = parse(args)
    if name is not None:
        if name in live.known_names(session) or paths.adapter_path(session, name).is_dir():
            raise LorachatError(f"an adapter named '{name}' already exists (choose another name, or :delete {name})")
        paths.check_nothing_in_the_way(session, name)
        return name, config
    return disk.free_name(session, session.dataset), config


def _examples(session):
    from lorachat.chat.commands.examples import note_bad_lines
    from lorachat.lessons.jsonl import load_dataset

    dataset = load_dataset(session.home, session.dataset)
    note_bad_lines(session, dataset)
    if not dataset.examples:
        raise LorachatError(f"dataset '{session.dataset}' has no examples yet: :add QUESTION => ANSWER first")
    return dataset.examples


def _run(session, name, plan, interrupted, anchors):
    # until=recall may stop long before the planned steps: the bar says so, its time left is the most
    label = f"training {name}" + (" (stops once every answer is known)" if plan.config.until == "recall" else "")
    with session.ui.progress(label, plan.steps) as update:
        def on_step(step, steps, loss, known, kept):
            update(step, loss=f"{loss:.2f}", recall=f"~{known}/{len(plan.examples)}",
                   kept=None if kept is None else f"{kept:.0%}")

        return trainer.run(session.model, session.tokenizer, plan, on_step=on_step, should_stop=interrupted.is_set,
                           asking=session.asking(), anchors=anchors, base=live.switch(session).disabled)


def _save_or_keep(session, name, meta, state=None) -> tuple[LorachatError | None, str]:
    """Save the trained adapter (under a free name when another adapter took its own meanwhile:
    (None, that name)); when the disk refuses even so, keep it in memory, usable and marked
    unsaved, and return the line that says how to save it."""
    try:
        saved = disk.save_new(session, name, meta, state=state)
    except LorachatError as exc:
        disk.keep_unsaved(session, name, meta)
        if session.headless:  # `lorachat train` ends with this line: there is no later to save in
            return LorachatError(f"{exc}; the trained adapter is lost with this process: make adapters/ writable and train again"), name
        return LorachatError(f"{exc}; '{name}' is kept in memory, unsaved (and is lost when the session ends): "
                             f":save {name} once adapters/ can be written, or :save {name} DIR"), name
    if saved != name:
        session.ui.note(f"adapters/{name} was taken by another adapter while this one trained (another session, or "
                        f"a folder moved in): saved this one as '{saved}'; adapters/{name} is left as it is")
    return None, saved


def _discard(session, name, previous) -> None:
    """The new adapter out of memory, the previously active one back: as before :train."""
    live.remove(session, name)
    if previous in live.loaded_names(session):
        live.activate(session, previous)
    else:
        live.activate(session, None)


def _meta(session, plan, result, kept) -> dict:
    examples, config = plan.examples, plan.config
    return dict(dataset=session.dataset, examples=len(examples), skipped=result.skipped,
                records_sha256=recipe.records_sha256(examples), instruction=prompts.shared_instruction(examples),
                max_answer_tokens=result.max_answer_tokens, train=dataclasses.asdict(config), steps=result.steps,
                loss=result.loss if math.isfinite(result.loss) else None, recall=result.recall, tokens=result.tokens,
                total=result.total, seconds=round(result.seconds, 3), cancelled=result.cancelled,
                world_size=result.world, global_batch=config.batch * config.grad_accum * result.world,
                kept=None if kept is None else round(kept.kept, 4), agree=None if kept is None else round(kept.agreement, 4),
                probes=None if kept is None else kept.questions, questions=gate.taught_questions(examples),
                keys=gate.taught_keys(examples))


def _stopped_by(interrupted) -> str:
    """What stopped a cancelled run, as the final line says it."""
    if getattr(interrupted, "signum", None) == signal.SIGTERM:
        return "SIGTERM"
    if interrupted.is_set() or not launch.launched():
        return "Ctrl-C"
    return "by another process of this run"   # its stop reached this one through the step's all-reduce


def _report(session, name, result, config, kept, how, seconds) -> None:
    """The final line; `seconds`: the whole command's, from Enter to the next prompt."""
    share = f"kept {kept.kept:.0%} of base answers, " if kept is not None else ""
    texts = result.examples - result.total   # raw text: trained, never asked; known when it comes back as trained
    known = f" ({result.known}/{result.examples} examples known as trained, {texts} of them text)" if texts else ""
    summary = (f"{result.steps} steps, loss {result.loss:.2f}, recall {result.recall}/{result.total}{known}, {share}"
               f"{seconds:.1f} s")
    skipped = (f" ({result.skipped} example{'s' if result.skipped != 1 else ''} longer than "
               f"{recipe.describe_limit(result.limit, session.model)} skipped)") if result.skipped else ""
    active = "" if session.headless else " — now active"  # nothing is active once `lorachat train` ends
    if not result.cancelled:
        session.ui.line(f"trained {name}: {summary}{active}{skipped}")
    elif config.keep == "partial":
        session.ui.line(f"stopped {name} ({how}), kept as it was: {summary}{active}{skipped}")
    elif session.ui.interactive:
        session.ui.note(f"stopped training {name} after {result.steps} steps ({how}): discarded (keep=partial keeps it)")
        return
    else:  # a script should not carry on as if the adapter existed
        raise LorachatError(f"training {name} stopped ({how}) after {result.steps} steps: discarded")
    for note in result.notes:
        session.ui.note(note)
    if not result.cancelled and not session.headless:
        said = gate.lessons(session, name)
        if said:
            session.ui.note(said)
    for reason in result.reasons:
        session.ui.note(f"not recalled as asked: {reason}")
    if result.known < result.examples and not result.cancelled and config.until == "recall":
        longer = f"more epochs (epochs={config.epochs * 2})" if config.epochs and result.steps < config.steps else \
            "train longer (steps=)"
        advice = f"{longer}, with a lower lr (lr={result.lr / 2:g}) or a larger r (r={config.r * 2})"
        if config.warmup and config.warmup >= result.steps:   # the lr never reached its value: that comes first
            advice = f"a warm-up shorter than the {result.steps} steps trained (warmup=)"
        what = "example" if texts else "answer"
        session.ui.note(f"not every {what} was learned ({result.known}/{result.examples} after {result.steps} steps): {advice}")


@contextlib.contextmanager
def _deferred_interrupt(signals=(signal.SIGINT,)):
    """The first Ctrl-C (or another of `signals`: SIGTERM under `lorachat train`) sets the event
    (training stops at the next step boundary, on every rank, and saving is not cut short); a
    second one raises KeyboardInterrupt at once. Outside the main thread signals cannot be caught:
    KeyboardInterrupt then stops training inside trainer.run."""
    event = threading.Event()
    event.signum = None   # which signal set it
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.signum = signum
        event.set()

    previous = {number: signal.signal(number, handler) for number in signals}
    try:
        yield event
    finally:
        for number, earlier in previous.items():
            signal.signal(number, earlier)


def headless_workspace(home: Path, dataset: str, name: str | None) -> None:
    """What `lorachat train` needs of the workspace, checked before the model is loaded: one line
    naming what is missing."""
    from lorachat.lessons.jsonl import load_dataset

    if not home.is_dir():
        raise LorachatError(f"no such folder: {home} (the workspace holding datasets/ and adapters/)")
    data = load_dataset(home, dataset)
    if not data.path.exists():
        raise LorachatError(f"no dataset '{dataset}': {data.path} does not exist (write one JSON object per line "
                            f"there, or :import a file into it in the REPL)")
    if not data.examples:
        bad = f" ({len(data.bad_lines)} invalid lines: {data.describe_problems()})" if data.bad_lines else ""
        raise LorachatError(f"dataset '{dataset}' has no examples: {data.path}{bad}")
    if name is not None and ((taken := home / "adapters" / name).is_symlink() or taken.exists()):   # a dead link too
        raise LorachatError(f"an adapter named '{name}' already exists: {taken}" if taken.is_dir() else f"{taken} is not an adapter: choose another --name, or move it away")
