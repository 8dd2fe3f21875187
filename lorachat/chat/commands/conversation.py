"""The conversation: :clear starts a new one, :history shows the turns questions are asked after,
:why says who answered the last question and why, :unroute sends it back to the base.

The turns live in the session (`session.turns`, kept by Session.ask); this module shows and resets
them. The gate's decisions are adapters/gate.py's; this module only words them. Knows nothing about
training.
"""
from lorachat.adapters import gate, steering
from lorachat.chat.commands import command, no_args
from lorachat.core.errors import LorachatError
from lorachat.routing.router import SHORTLIST

CLIP = 200   # characters of a question or answer shown per turn
# the check's share from which :why offers :fix: the paraphrases the gate missed on smol gave 0.42-0.72,
# look-alikes of another subject about 0 ("the mayor of Berlin": -0.07), a battery's SOH 0.04
NEAR_MISS = 0.4


@command("clear")
def clear(session, args):
    """Start a new conversation: earlier turns are forgotten (and :good / :fix have nothing to refer to)."""
    no_args("clear", args)
    count = len(session.turns)
    session.clear()
    session.ui.line(f"new conversation ({count} turn{'' if count == 1 else 's'} forgotten)")


@command("history")
def history(session, args):
    """Show the turns of the conversation that the next question is asked after."""
    no_args("history", args)
    if not session.conversation():
        session.ui.line("the conversation is off: each question is asked alone (:set context=on keeps it)")
        return
    if not session.turns:
        session.ui.line("no turns yet: the next question starts the conversation")
        return
    session.ui.line(f"{len(session.turns)} turn{'' if len(session.turns) == 1 else 's'} (:clear starts anew):")
    for number, (question, answer) in enumerate(session.turns, 1):
        session.ui.line(f"{number}. > {_clip(question)}")
        session.ui.line(f"   {_clip(answer)}")


def _clip(text: str) -> str:
    text = " ⏎ ".join(text.splitlines())
    return text if len(text) <= CLIP else text[:CLIP - 3] + "..."


@command("why")
def why(session, args):
    """Say who answered the last question, the adapter or the base, and why.

    The gate's nearest taught question, how much of it the question covers, and the check against gate_at.
    A question goes to the active adapter when it asks what a taught question asks: it must cover
    that question's words (coverage, at least 0.4, read by the base's first layers) and make its
    taught answer about as likely as the taught question does (share, at least :set gate_at).
    The adapter is then asked the taught question. Every other question is the base's, exactly.
    It ends with what to type when the gate got it wrong: `:unroute` for a question the adapter
    should not have answered, `:fix` with the taught answer for one that fell just short (share 0.4 up).
    """
    no_args("why", args)
    last = gate.last(session)
    if last is None:
        raise LorachatError(":why: no question asked yet in this session")
    question, name, decision = last
    said = f"{_clip(question)!r} was answered by"
    if name is None:
        session.ui.line(f"{said} the base: no adapter was active")
        return
    if decision is None:
        reason = "the gate is off" if not gate.enabled(session) else f"'{name}' has no record of what it was taught"
        session.ui.line(f"{said} adapter '{name}' as asked: {reason}, so it answers every question")
        return
    if decision.key is not None:
        alone = " alone, as it was taught (not after the conversation's turns)" if decision.alone and session.conversation() else ""
        session.ui.line(f"{said} adapter '{name}', asked its taught question {_clip(decision.asks)!r}{alone}")
    elif decision.unrouted is not None:
        session.ui.line(f"{said} the base, not adapter '{name}': it is as near {_clip(decision.unrouted.question)!r}, "
                        f"sent back to the base with :unroute, as to any question taught for that answer")
    else:
        session.ui.line(f"{said} the base, not adapter '{name}': it asks nothing '{name}' was taught, as the gate reads it")
    if decision.key is None and session.last_turns_read:   # what the base answered follows the turns, taught answers too
        count = session.last_turns_read
        session.ui.line(f"  the base read it after the conversation's {count} earlier turn{'s' if count > 1 else ''}, "
                        "whose answers it may repeat (:clear starts afresh; :set context=off asks each question alone)")
    if decision.nearest is not None:
        session.ui.line(f"  nearest taught question: {_clip(decision.nearest.question)!r}, coverage "
                        f"{decision.coverage:.2f} (checked from {SHORTLIST:g})")
    if decision.share is not None:
        which = "" if decision.checked == decision.nearest else f" of {_clip(decision.checked.question)!r}"
        session.ui.line(f"  check: it lifts the taught answer{which} {decision.share:.2f} as much as its taught question "
                        f"does (the adapter answers from gate_at={session.settings.gate_at:g})")
    if decision.key is not None and decision.key.question != question.strip():
        session.ui.line("  asks something else? :unroute sends it, and questions nearer it than the taught one, to the base")
    elif (decision.key is None and decision.unrouted is None and decision.checked is not None
          and decision.checked.answer is not None and (decision.share or 0) >= NEAR_MISS):
        taught = decision.checked.answer   # :fix with it makes the question a phrasing (steering.add_phrasing)
        fix = f":fix {taught}" if len(taught) <= CLIP and "\n" not in taught else ":fix with its taught answer"
        session.ui.line(f"  asks what {_clip(decision.checked.question)!r} asks? {fix}  (it routes from then on, "
                        "no training; if it asks something else, the base was right)")


@command("unroute")
def unroute(session, args):
    """Send the last question back to the base: the active adapter answered it, and should not have.

    For a question that asks something else about a taught subject ("What is the population of
    Greyhollow?" after teaching its river), which the gate can mistake for a rephrasing. From now on
    it, and questions nearer to it than to every question taught or added for the answer it reached,
    are the base's. Kept in the adapter's lorachat.json, no training needed. A rephrasing of the
    taught question close to it in form can go with it: `:add` that rephrasing with the taught
    answer keeps it the adapter's (and `:add` of the sent-back question itself takes it back).
    A phrasing you added (`:add`, `:fix`) is taken back instead: the gate decides it as any question.
    """
    no_args("unroute", args)
    last = gate.last(session)
    if last is None:
        raise LorachatError(":unroute: no question asked yet in this session")
    question, name, decision = last
    if name is None or decision is None or decision.key is None:
        who = "no adapter was active" if name is None else \
            "the gate did not decide it (:why says why)" if decision is None else "the base already answered it"
        raise LorachatError(f":unroute: {who}; it sends back a question the gate gave to the adapter")
    if name != session.active_adapter:
        raise LorachatError(f":unroute: the last question was answered by '{name}', not the active adapter: ask it again")
    key = steering.unroute(session, name, question, decision)
    if key.added and key.question == question.strip():
        session.ui.line(f"{_clip(question)!r} is no longer a phrasing of what '{name}' was taught: the gate decides it "
                        f"as any question again (:unroute once more, if it still reaches '{name}')")
        return
    session.ui.line(f"{_clip(question)!r} now goes to the base, not to '{name}' asked {_clip(decision.asks)!r} "
                    f"(and so do questions nearer it than any question taught for that answer)")
    if session.conversation() and session.turns:   # the wrong answer is one of them: the base may repeat it
        session.ui.line("  in this conversation the base reads the earlier turns and may repeat the answer among them: "
                        ":clear starts afresh")
