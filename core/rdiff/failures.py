"""How failures reach a user: operating-system errors as one sentence, warnings as one line, interruptions
described for the command that was interrupted.

A full disk, a read-only folder or a missing permission is not a bug in rdiff: every command reports it
as one sentence naming the path, with exit code 2, instead of a traceback.
"""

from __future__ import annotations

import errno
import re
import warnings
from pathlib import Path

# the temporary names atomic writes use (rdiff.images.temp_beside: ".NAME.<12 hex>SUFFIX", and ".NAME.tmp")
_TEMP_NAME = re.compile(r"^\.(?P<name>.+?)(?:\.[0-9a-f]{12}(?:\.[^.]*)?|\.tmp)$")

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "it already exists",
}
_HINTS = {
    errno.ENOSPC: "free some space or choose another output folder",
    errno.EDQUOT: "free some space or choose another output folder",
    errno.EROFS: "choose a writable output folder",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
}


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


def short_warnings() -> None:
    """Show rdiff's own warnings as ``rdiff: warning: <message>``: a user needs the message, not the source
    line of the module that issued it. Other libraries' warnings keep Python's usual format."""
    original = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):  # noqa: ANN001 - warnings' signature
        parts = Path(str(filename)).parts
        if any(p == "rdiff" or p.startswith("rdiff_") for p in parts) and issubclass(category, UserWarning):
            return f"rdiff: warning: {message}\n"
        return original(message, category, filename, lineno, line)

    if getattr(original, "__module__", "") != __name__:  # install once per process
        warnings.formatwarning = formatwarning


TRAINING_COMMANDS = ("train", "reconstruct", "adapt", "bench")


def interrupted_message(command: str | None) -> str:
    """What an interruption (Ctrl-C) leaves behind, for the command that was running."""
    if command in TRAINING_COMMANDS:
        return "interrupted; the last checkpoint is kept (resume with --resume)"
    if command in ("enhance", "degrade"):
        return ("interrupted; every file already written is complete (files appear under their final names "
                "only when finished), the others were not written")
    return "interrupted"
