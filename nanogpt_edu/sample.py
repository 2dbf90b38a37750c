"""Sample from a trained model: nanoGPT's sample.py as a command line.

    python -m nanogpt_edu.sample [config_file ...] [--key=value ...]

Settings and their defaults are ``nanogpt_edu.config.SampleConfig``: the same as sample.py's, except that the
model is the offline pocket model and the device is chosen automatically. Config files hold ``key = value``
lines and are read, never run. Each sample is printed followed by a line of dashes, as sample.py does.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import TextIO

import torch

from .config import ConfigError, SampleConfig, apply_overrides, resolve_start
from .devices import DeviceError, setup_torch
from .loading import LoadError, load
from .porting import ModelNotAvailableError, PortingError
from .sampling import generate, start_from_eot_if_empty, stream_text

SEPARATOR = "---------------"
USER_ERRORS = (ConfigError, DeviceError, LoadError, PortingError, ModelNotAvailableError)


def usage() -> str:
    """Return the --help text: the usage line and every setting with its default."""
    lines = [__doc__.strip(), "", "settings (default):"]
    for f in fields(SampleConfig):
        lines.append(f"  --{f.name}={getattr(SampleConfig(), f.name)!r}")
    return "\n".join(lines)


def run(config: SampleConfig, out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Load the model ``config`` names and print ``num_samples`` samples, as sample.py does."""
    out, err = out or sys.stdout, err or sys.stderr
    prompt = resolve_start(config.start)
    setup = setup_torch(config.seed, config.device, config.dtype)
    print(setup.explanation, file=err)
    model, codec = load(config.init_from, config.out_dir)
    model = model.to(setup.device)
    if config.compile:
        if setup.device == "cpu":
            print("note: compile=True on a CPU makes the first generation wait for compilation, and the compiled "
                  "model generated more slowly than the plain one in this project's measurements (README, "
                  "Speed); it is meant for GPUs", file=err)
        model = torch.compile(model)
    prompt_ids = torch.tensor(codec.encode(prompt), dtype=torch.long, device=setup.device)[None, ...]  # (1, T)
    try:
        x = start_from_eot_if_empty(prompt_ids, codec.eot)
    except ValueError as e:
        raise ConfigError(f"start: {e}") from None
    skip = x.size(1) - prompt_ids.size(1)  # the <|endoftext|> put before an empty prompt is not printed
    stop_token = codec.eot if config.stop_at_eot else None
    sampling = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, min_p=config.min_p,
                    stop_token=stop_token)
    with torch.no_grad(), setup.autocast:
        for _ in range(config.num_samples):
            if config.stream:
                out.write(prompt)
                for piece in stream_text(model, x, config.max_new_tokens, decode_bytes=codec.decode_bytes,
                                         **sampling):
                    out.write(piece)
                    out.flush()
                out.write("\n")
            else:
                y = generate(model, x, config.max_new_tokens, **sampling)
                out.write(codec.decode(trim_at_stop(y[0].tolist()[skip:], x.size(1) - skip, stop_token)) + "\n")
            out.write(SEPARATOR + "\n")
            out.flush()


def trim_at_stop(ids: list[int], prompt_length: int, stop_token: int | None) -> list[int]:
    """Return ``ids`` cut before the first ``stop_token`` generated after the prompt (unchanged if None)."""
    if stop_token is None or stop_token not in ids[prompt_length:]:
        return ids
    return ids[: ids.index(stop_token, prompt_length)]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (2 for a bad argument, with one line on stderr)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    try:
        config = apply_overrides(SampleConfig(), argv)
        run(config)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
