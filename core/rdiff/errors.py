"""How a failure reaches a user: :class:`UserError` (bad usage or bad input, printed as one sentence, exit
code 2), :class:`TrainingStopped`, and operating-system errors told as one sentence.

A full disk, a read-only folder or a missing permission is not a bug in rdiff: every command reports it
as one sentence naming the path (:func:`describe_os_error`), with exit code 2, instead of a traceback.
"""

from __future__ import annotations

import difflib
import errno
import re
from collections.abc import Iterable
from pathlib import Path


class UserError(Exception):
    """Bad usage or bad input. The CLI prints the message alone (no traceback) and exits with code 2."""

    exit_code = 2


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class TrainingStopped(Exception):
    """A run cannot go on (e.g. the loss kept being non-finite). The last good checkpoint is kept; exit code 1."""


# the temporary names atomic writes use (rdiff.images.temp_beside: ".NAME.<12 hex>SUFFIX", and ".NAME.tmp")
_TEMP_NAME = re.compile(r"^\.(?P<name>.+?)(?:\.[0-9a-f]{12}(?:\.[^.]*)?|\.tmp)$")

_REASONS = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EDQUOT: "the disk quota is exceeded", errno.ENOENT: "no such file or folder",
            errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EISDIR: "it is a folder",
            errno.EEXIST: "it already exists", errno.EFBIG: "the file would exceed the largest size allowed"}
_SPACE, _WRITABLE = "free some space or choose another output folder", "choose a folder you may write to"
_HINTS = {errno.ENOSPC: _SPACE, errno.EDQUOT: _SPACE, errno.EFBIG: _SPACE, errno.EROFS: "choose a writable output folder",
          errno.EACCES: _WRITABLE, errno.EPERM: _WRITABLE}


def describe_os_error(exc: OSError, path: str | Path | None = None) -> str:
    """One sentence for ``exc``: what could not be done to which path, why, and what to do."""
    target = path if path is not None else exc.filename
    if target is not None:  # name the file the user asked for, not the temporary file written first
        parts = [(m["name"] if (m := _TEMP_NAME.match(part)) else part) for part in Path(str(target)).parts]
        target = Path(*parts)
    reason = _REASONS.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")
    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    where = f"'{target}'" if target is not None else "a file"
    hint = _HINTS.get(exc.errno)
    verb = "write" if exc.errno in _HINTS else "use"
    return f"cannot {verb} {where}: {reason}{code}" + (f"; {hint}." if hint else ".")
