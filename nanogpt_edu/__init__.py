"""nanogpt_edu: the library behind a notebook series that walks through nanoGPT's sample.py.

The pieces a learner meets, in the order sample.py uses them: ``SampleConfig`` (settings), ``load_model`` (the
pocket model, GPT-2, or a nanoGPT checkpoint), ``get_encoding`` (GPT-2's BPE, offline) and ``generate``. Bad input
of any kind (a flag, a file, a size, the environment) raises ``NanogptEduError``, a ``ValueError`` with one line.
"""

import os

# OpenMP threads that finish their share of a parallel step wait for the others by spinning, by default for a
# few milliseconds. When something else also wants the cores (a browser, a second notebook) a spinning thread
# delays the very thread it waits for, and generation ran many times slower. Spinning about 10 microseconds
# before sleeping keeps nearly all the speed of an idle machine and avoids that (README, Speed). GNU OpenMP, which
# torch uses on Linux, reads this once, when torch is first imported, so it is set before any import of torch (the
# notebooks' Jupyter kernel sets it too, since a notebook may import torch first). Your own OMP_WAIT_POLICY or
# GOMP_SPINCOUNT stays as it is.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# A malformed OMP_NUM_THREADS would make OpenMP print a complaint of its own as torch loads; the command line
# refuses it in its one error line instead
from .limits import check_omp_num_threads  # noqa: E402  (no torch in it)

BAD_OMP_NUM_THREADS = check_omp_num_threads()

from .tokenizer import get_encoding, install_tiktoken_cache  # noqa: E402

# Make the unchanged line from sample.py, tiktoken.get_encoding("gpt2"), work without a network.
install_tiktoken_cache()

from .config import SampleConfig  # noqa: E402  (after the cache is in place)
from .errors import NanogptEduError  # noqa: E402
from .loading import load_codec, load_model  # noqa: E402
from .model import GPT, GPTConfig  # noqa: E402
from .sampling import generate  # noqa: E402

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "NanogptEduError", "SampleConfig", "generate", "get_encoding", "load_codec",
           "load_model"]
