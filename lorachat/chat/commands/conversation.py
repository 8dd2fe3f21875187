"""The conversation: :clear starts a new one, :history shows the turns questions are asked after.

The turns live in the session (`session.turns`, kept by Session.ask); this module shows and resets
them. Knows nothing about training or adapters.
"""
from lorachat.chat.commands import command, no_args

CLIP = 200   # characters of a question or answer shown per turn


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
