"""The one exception type a user sees: bad usage or bad input, printed as one sentence, exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad usage or bad input. The CLI prints the message alone (no traceback) and exits with code 2."""

    exit_code = 2


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class TrainingStopped(Exception):
    """A run cannot go on (e.g. the loss kept being non-finite). The last good checkpoint is kept; exit code 1."""
