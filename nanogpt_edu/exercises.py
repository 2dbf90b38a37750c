"""What the notebooks' exercise checks use: one clear line when an answer is missing or not right yet.

An exercise asks for a few names (say ``n_tokens`` and ``longest``). The check cell under it fetches exactly those
names with ``answers``, works out the right answers itself from the exercise's own inputs (never from the
solution's variables, so a learner's own names and a deleted solution both work), and compares with ``check``:

    n_tokens, longest = answers("n_tokens", "longest")
    check(isinstance(n_tokens, int), "n_tokens should be a whole number, the count of ids")
    check(n_tokens == len(encode(line)), "n_tokens: count the ids of the whole line, not its words")

A missing name stops the cell with ``not done yet: define `longest` first``; a wrong answer with
``not right yet:`` and the hint. In Jupyter each shows as that one line, with no traceback, because both
exceptions tell IPython how to display themselves (``_render_traceback_``).
"""

from __future__ import annotations

import sys
from typing import Any


class ExerciseCheck(Exception):
    """The base of the two outcomes below: displayed by IPython as one line, without a traceback."""

    prefix = ""

    def _render_traceback_(self) -> list[str]:
        return [f"{self.prefix}{self}"]


class NotDoneYet(ExerciseCheck):
    """A name the exercise asks for is not defined yet."""

    prefix = "not done yet: "


class NotRightYet(ExerciseCheck, AssertionError):
    """An answer is defined but not right; the message is a hint, never the answer."""

    prefix = "not right yet: "


def answers(*names: str) -> Any:
    """Return the values the notebook holds for ``names`` (one value, or a tuple for several).

    Raises ``NotDoneYet`` naming every one of them that is not defined yet.
    """
    notebook = sys._getframe(1).f_globals  # the calling cell's globals: the notebook's own variables
    missing = [name for name in names if name not in notebook]
    if missing:
        listed = " and ".join(f"`{name}`" for name in missing)
        raise NotDoneYet(f"define {listed} first (the exercise above asks for {'it' if len(missing) == 1 else 'them'})")
    values = tuple(notebook[name] for name in names)
    return values[0] if len(values) == 1 else values


def check(condition: object, hint: str) -> None:
    """Raise ``NotRightYet(hint)`` unless ``condition`` is true."""
    if not condition:
        raise NotRightYet(hint)


def buggy_port(hf_state_dict: dict, config) -> "GPT":
    """Return a ``GPT`` ported from ``hf_state_dict`` with one bug planted in the port (notebook 02, exercise 2).

    The model loads without complaint and gives wrong logits. The exercise is to find the bug by comparing its
    activations with Hugging Face's, block by block, so try that before reading this function's code.
    """
    from .model import GPT
    from .porting import port_hf_state_dict

    ported = port_hf_state_dict(hf_state_dict, config)
    planted = f"transformer.h.{config.n_layer // 2}.attn.c_proj.weight"  # a square Conv1D weight: no shape error
    ported[planted] = ported[planted].t().contiguous()  # left in Hugging Face's (in, out) layout
    model = GPT(config)
    model.load_state_dict(ported)
    return model.eval()
