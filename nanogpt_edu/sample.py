"""Sample from a trained model: nanoGPT's sample.py as a command line.

    python -m nanogpt_edu.sample [config_file ...] [--key=value ...]

Settings and their defaults are ``nanogpt_edu.config.SampleConfig``: the same as sample.py's, except that the
model is the offline pocket model and the device is chosen automatically. Config files hold ``key = value``
lines and are read, never run. Each sample is printed followed by a line of dashes, as sample.py does.

Exit status: 0 when done; 2 with one line on stderr, ``error: ...``, for any bad input (a flag, a file, a model
that does not fit in memory, the environment) and when the output cannot be written (a full disk); 141, quietly,
when whoever reads the output stops reading (``| head``), as Unix tools do; 130 on Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from dataclasses import fields
from typing import TextIO

import torch

from .config import ConfigError, SampleConfig, apply_overrides, resolve_start, validate
from .devices import DeviceError, setup_torch
from .errors import NanogptEduError, one_line, shown
from .loading import LoadError, load
from .porting import ModelNotAvailableError, PortingError
from .sampling import generate, start_from_eot_if_empty, stream_text

SEPARATOR = "---------------"
USER_ERRORS = (ConfigError, DeviceError, LoadError, PortingError, ModelNotAvailableError)  # all NanogptEduError
EXIT_BAD_INPUT, EXIT_PIPE_CLOSED, EXIT_INTERRUPTED = 2, 128 + 13, 130  # 141: what a SIGPIPE death reports


class OutputError(NanogptEduError):
    """The samples cannot be written (a full disk, a closed file)."""


def usage() -> str:
    """Return the --help text: the usage line and every setting with its default."""
    lines = [__doc__.strip(), "", "settings (default):"]
    for f in fields(SampleConfig):
        lines.append(f"  --{f.name}={getattr(SampleConfig(), f.name)!r}")
    return "\n".join(lines)


def run(config: SampleConfig, out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Load the model ``config`` names and print ``num_samples`` samples, as sample.py does.

    Every input is checked before generation starts; a problem raises ``NanogptEduError`` (see ``main``).
    """
    out, err = out or sys.stdout, err or sys.stderr
    validate(config)
    prompt = resolve_start(config.start)
    setup = setup_torch(config.seed, config.device, config.dtype)
    model, codec = load(config.init_from, config.out_dir)
    prompt_ids = torch.tensor(codec.encode(prompt), dtype=torch.long)[None, ...]  # (1, T)
    try:
        x = start_from_eot_if_empty(prompt_ids, codec.eot).to(setup.device)
    except ValueError as e:
        raise ConfigError(f"start: {e}") from None
    compile_errors = _check_compile(setup.device) if config.compile else ()
    # said only now that every input has passed, so a bad one leaves a single line on stderr: its error
    print(setup.explanation, file=err)
    model = model.to(setup.device)
    if config.compile:
        if setup.device == "cpu":
            print("note: compile=True on a CPU makes the first generation wait for compilation, and the compiled "
                  "model generated more slowly than the plain one in this project's measurements (README, "
                  "Speed); it is meant for GPUs", file=err)
        model = torch.compile(model)
    skip = x.size(1) - prompt_ids.size(1)  # the <|endoftext|> put before an empty prompt is not printed
    stop_token = codec.eot if config.stop_at_eot else None
    sampling = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, min_p=config.min_p,
                    stop_token=stop_token)
    try:
        with torch.no_grad(), setup.autocast:
            for _ in range(config.num_samples):
                if config.stream:
                    _write(out, prompt)
                    for piece in stream_text(model, x, config.max_new_tokens, decode_bytes=codec.decode_bytes,
                                             **sampling):
                        _write(out, piece)
                    _write(out, "\n")
                else:
                    y = generate(model, x, config.max_new_tokens, **sampling)
                    ids = trim_at_stop(y[0].tolist()[skip:], x.size(1) - skip, stop_token)
                    _write(out, codec.decode(ids) + "\n")
                _write(out, SEPARATOR + "\n")
    except ValueError as e:  # sampling refuses NaN or infinite logits: finite weights that overflow on the way
        if isinstance(e, OutputError):
            raise
        raise NanogptEduError(f"init_from={shown(config.init_from)}: generation stopped: {e}") from None
    except compile_errors as e:  # torch.compile failed on the first call (a compiler that runs but fails)
        raise ConfigError(f"compile=True: torch.compile failed ({_first_line(e)}); run without --compile") from None


def _check_compile(device: str) -> tuple[type[BaseException], ...]:
    """Raise ``ConfigError`` if ``torch.compile`` cannot work here; return the errors it raises when it fails."""
    import torch._dynamo.exc

    if device == "cpu":  # inductor turns the model into C++ on a CPU: without a compiler the first call fails
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as e:  # InvalidCxxCompiler, or an OSError running the one named in CXX
            raise ConfigError(f"compile=True needs a working C++ compiler on a CPU, and none was found "
                              f"({_first_line(e)}); run without --compile") from None
    return (torch._dynamo.exc.TorchDynamoException,)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _write(out: TextIO, text: str) -> None:
    # a closed pipe (BrokenPipeError) ends the run quietly in main; any other failure to write is one error line
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as e:  # ValueError: a file that was closed
        raise OutputError(f"cannot write the samples: {getattr(e, 'strerror', None) or e}") from None


def trim_at_stop(ids: list[int], prompt_length: int, stop_token: int | None) -> list[int]:
    """Return ``ids`` cut before the first ``stop_token`` generated after the prompt (unchanged if None)."""
    if stop_token is None or stop_token not in ids[prompt_length:]:
        return ids
    return ids[: ids.index(stop_token, prompt_length)]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (2 for bad input, with one line on stderr; see the module doc)."""
    argv = sys.argv[1:] if argv is None else argv
    if sys.stderr is None:  # started with stderr closed (`2>&-`): print(file=None) would write into stdout
        sys.stderr = open(os.devnull, "w")
    if sys.stdout is None:  # started with stdout closed (`>&-`): there is nowhere to put the samples
        _report("error: standard output is closed; nowhere to write the samples")
        return EXIT_BAD_INPUT
    _tolerate_unencodable_text()
    try:
        if any(a in ("-h", "--help") for a in argv):
            _write(sys.stdout, usage() + "\n")
            return 0
        config = apply_overrides(SampleConfig(), argv, log=lambda line: _write(sys.stdout, line + "\n"))
        run(config)
    except NanogptEduError as e:
        _silence_stdout_if_broken()
        _report(f"error: {e}")
        return EXIT_BAD_INPUT
    except MemoryError:  # the size checks estimate; if the allocator still says no, that is one line too
        _report("error: out of memory (try a smaller model, prompt or max_new_tokens)")
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # whoever read the output stopped (`... | head`): stop quietly, as Unix tools do; stdout now goes nowhere,
        # so Python's final flush of what is still buffered cannot fail with a second BrokenPipeError
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def _tolerate_unencodable_text() -> None:
    # a file name may hold bytes that are not UTF-8 (Python keeps them as lone surrogates): echoing it in an
    # "Overriding:" or error line must not fail, so such characters are written escaped
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _silence_stdout_if_broken() -> None:
    try:
        sys.stdout.flush()
    except OSError:  # a full disk or closed pipe: what is still buffered has nowhere to go
        _silence_stdout()


def _silence_stdout() -> None:
    # Python's docs on SIGPIPE: point stdout at devnull, so that nothing fails when the interpreter exits
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout): nothing to silence
        pass


def _report(line: str) -> None:
    # every line this prints goes through one_line: no control character from a file or flag reaches the terminal
    try:
        print(one_line(line), file=sys.stderr, flush=True)
    except OSError:  # stderr itself cannot be written: the exit status still says it
        pass


if __name__ == "__main__":
    sys.exit(main())
