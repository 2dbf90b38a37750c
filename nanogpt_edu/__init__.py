"""nanogpt_edu: the library behind a notebook series that walks through nanoGPT's sample.py."""

from .tokenizer import install_tiktoken_cache as _install_tiktoken_cache

__version__ = "0.1.0"

# Make the unchanged line from sample.py, tiktoken.get_encoding("gpt2"), work without a network.
_install_tiktoken_cache()
