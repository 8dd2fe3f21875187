"""Importing examples from files and hub datasets: :import.

lessons/importers.py maps the rows; this command appends them to the current dataset (on disk
before the acknowledgement, in one write that :undo takes back whole), says what was skipped and
which examples are too long to train on.
"""
from lorachat.chat import options
from lorachat.chat.commands import command
from lorachat.chat.commands.examples import how_many, take_instruction
from lorachat.core.errors import LorachatError
from lorachat.core.names import check_name
from lorachat.core.prompts import example_ids
from lorachat.lessons import jsonl
from lorachat.lessons.formats import FORMATS
from lorachat.lessons.importers import ImportOptions, import_examples


def _import_details(session):
    session.ui.table(["key", "default", "meaning"], [list(r) for r in options.describe(ImportOptions())])


@command("import", usage=f":import SOURCE [format={'|'.join(FORMATS)}] [limit=N] [split=SPLIT]", details=_import_details)
def import_(session, args):
    """Append examples from a local .json/.jsonl/.csv/.parquet file or a hub dataset id to the current dataset.

    Formats: alpaca (instruction/input/output), prompt-completion, messages (OpenAI style),
    sharegpt (conversations from/value), text, piqa (goal, sol1/sol2, label); auto picks one from
    the fields. Rows that cannot be mapped are skipped, with the reason.
    """
    positional, pairs = options.split_kv(options.split_words(args))
    if len(positional) != 1:
        raise LorachatError(f"write :import SOURCE [key=value ...] with one SOURCE (got {len(positional)})")
    settings = options.apply_kv(ImportOptions(), pairs)
    check_name(session.dataset, "dataset")
    result = import_examples(positional[0], settings, session.instruction)
    if settings.format == "auto":
        session.ui.note(f"format auto: chose {result.format} (fields {', '.join(result.columns)})")
    if not result.examples:
        raise LorachatError(f"nothing imported from {positional[0]} (format {result.format}); {result.describe_skipped()}")
    mark = jsonl.append_marked(session.home, session.dataset, result.examples)[1]
    session.extensions.setdefault("recorded", []).append(mark)   # :undo takes them all back
    session.ui.line(f"imported {how_many(len(result.examples))} (format {result.format}) into {session.dataset}; "
                    f"{result.describe_skipped()}")
    _warn_long(session, result.examples)
    take_instruction(session, jsonl.load_dataset(session.home, session.dataset))


def _warn_long(session, examples) -> None:
    """Examples the loaded model cannot train on (too many tokens for its positions) are kept,
    and :train will leave them out: say so now."""
    limit = session.context_length()
    long = sum(1 for e in examples if len(example_ids(session.tokenizer, e)[0]) > limit)
    if long:
        session.ui.note(f"warning: {long} of these examples are longer than the model's {limit} positions; "
                        ":train leaves them out")
