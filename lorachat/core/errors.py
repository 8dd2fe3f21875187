"""LorachatError: a user's mistake or an unmet condition, shown as one `error: ...` line.

Anything else that escapes is a bug and keeps its traceback; this module knows nothing about
how errors are shown.
"""
import difflib


class LorachatError(Exception):
    """An error the user can act on; its message is one line, shown after `error: `."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
