"""The one error nanogpt_edu raises for bad input, and how its messages show what the user gave.

Every problem with something a user controls (a command-line flag, a config or prompt file, a checkpoint, a
vocabulary, a Hugging Face folder or name, a device, the environment) raises ``NanogptEduError`` or one of its
subclasses (``ConfigError``, ``LoadError``, ``PortingError``, ``DeviceError``, ``ModelNotAvailableError``), with a
one-line message that names the file, flag or key and says what is wrong. The command line prints that line after
``error:`` and exits with status 2. It derives from ``ValueError``, so code that caught ``ValueError`` still works.
"""

from __future__ import annotations

import reprlib

# every character str.splitlines() splits at: a message keeps them, escaped, so it stays one line
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ESCAPED = {ord(c): c.encode("unicode_escape").decode("ascii") for c in _LINE_BREAKS}


class NanogptEduError(ValueError):
    """The one error every user-input problem raises: bad flags, files, sizes, devices or environment.

    ``str(error)`` is always a single line (line breaks in file names or values are shown escaped).
    """

    def __init__(self, message: str):
        super().__init__(str(message).translate(_ESCAPED))


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _repr.maxlong = 80
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4


def shown(value: object) -> str:
    """Return a short ``repr`` of ``value`` for an error message: never long, never more than one line."""
    try:
        return _repr.repr(value)
    except Exception:  # e.g. an int with more digits than Python will print
        return f"<{type(value).__name__}>"
