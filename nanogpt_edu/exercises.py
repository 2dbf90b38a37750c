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

import functools
import inspect
import numbers
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType
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


def whole_number(value: Any) -> int | None:
    """Return ``value`` as a Python int if it is a whole number of any integer type (int, NumPy's, a one-element
    integer tensor), else ``None``. ``True``/``False`` are not numbers here."""
    if hasattr(value, "numel") and hasattr(value, "is_floating_point"):  # a tensor
        if value.numel() != 1 or value.is_floating_point() or value.is_complex():
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def call_answer(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """Return ``function(*args, **kwargs)`` for a function the learner wrote; an exception it raises becomes one
    ``NotRightYet`` line naming the call, instead of a traceback through the check."""
    try:
        return function(*args, **kwargs)
    except ExerciseCheck:
        raise
    except Exception as error:  # the learner's own bug: say which call raised what
        shown = ", ".join([*(repr(a) if not hasattr(a, "shape") else f"<{type(a).__name__} {tuple(a.shape)}>"
                             for a in args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        name = getattr(function, "__name__", "your function")
        raise NotRightYet(f"{name}({shown}) raised {type(error).__name__}: {error}") from None


def _unwrapped(function: Callable) -> Callable:
    """``function`` itself, through bound methods, ``functools.wraps`` wrappers and partials."""
    while True:
        if isinstance(function, functools.partial):
            function = function.func
        elif inspect.ismethod(function):
            function = function.__func__
        elif getattr(function, "__wrapped__", None) is not None:
            function = inspect.unwrap(function)
        else:
            return function


def _calls_c_function(called: Any, function: Callable) -> bool:
    """True if the C function ``called`` (a profiler's c_call argument) is ``function``: the same builtin, or for a
    method of a C type (``torch.Tensor.topk``) the same method bound to an instance of that type."""
    if called is function:
        return True
    owner = getattr(function, "__objclass__", None)
    return (owner is not None and getattr(called, "__name__", None) == function.__name__
            and isinstance(getattr(called, "__self__", None), owner))


@contextmanager
def forbid(*functions: Callable, hint: str) -> Iterator[None]:
    """Raise ``NotRightYet(hint)`` if the code run inside the ``with`` block calls any of ``functions``.

    A check wraps the call of the learner's function in it when the exercise asks them to write what one of the
    library's functions does: handing the work to that function must not pass. Calls are recognised by the code
    they run, never by names, so an alias (``from nanogpt_edu.sampling import generate as g``), ``getattr``, a
    bound method, ``functools.partial``, a lambda or a helper of the learner's own that calls it are all seen.
    Functions written in C (``torch.topk``, ``torch.Tensor.topk``) are recognised as the very function called.
    (Only this thread is watched: enough for a notebook's answers.)
    """
    python, c_functions = set(), []
    for function in map(_unwrapped, functions):
        code = getattr(function, "__code__", None)
        if isinstance(code, CodeType):
            python.add(code)
        elif inspect.isbuiltin(function) or inspect.ismethoddescriptor(function):
            c_functions.append(function)
        else:
            raise TypeError(f"forbid() watches functions; {function!r} is not one")
    called: list[str] = []
    previous = sys.getprofile()

    def watch(frame, event, arg):
        if event == "call" and frame.f_code in python:
            called.append(frame.f_code.co_name)
        elif event == "c_call" and any(_calls_c_function(arg, function) for function in c_functions):
            called.append(arg.__name__)
        if previous is not None:  # a profiler that was already running keeps seeing everything
            previous(frame, event, arg)

    sys.setprofile(watch)
    try:
        yield
    finally:
        sys.setprofile(previous)
        if called:  # the more useful message, even if the answer also failed in another way
            raise NotRightYet(hint) from None


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
