"""The one error nanogpt_edu raises for bad input, and how its messages show what the user gave.

Every problem with something a user controls (a command-line flag, a config or prompt file, a checkpoint, a
vocabulary, a Hugging Face folder or name, a device, the environment) raises ``NanogptEduError`` or one of its
subclasses (``ConfigError``, ``LoadError``, ``PortingError``, ``DeviceError``, ``ModelNotAvailableError``), with a
one-line message that names the file, flag or key and says what is wrong. The command line prints that line after
``error:`` and exits with status 2. It derives from ``ValueError``, so code that caught ``ValueError`` still works.
"""

from __future__ import annotations

import re
import reprlib

# What a terminal would act on instead of showing: the C0 and C1 control characters (ESC starts the sequences
# that clear the screen or move the cursor up a line; CR and BS rewrite a line), DEL, the line and paragraph
# separators str.splitlines() also splits at, and the bidirectional controls that reorder what is shown. A
# message keeps them, escaped (\x1b, \u202e), so it stays one line that shows what the file or flag held.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """Return ``text`` with every control character escaped: safe to print as one line on a terminal."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


class NanogptEduError(ValueError):
    """The one error every user-input problem raises: bad flags, files, sizes, devices or environment.

    ``str(error)`` is always a single line with no control characters: line breaks, terminal escape sequences
    and the like in file names or values are shown escaped (see ``one_line``).
    """

    def __init__(self, message: str):
        super().__init__(one_line(message))


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
