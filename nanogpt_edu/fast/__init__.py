"""The engine: generation made fast on a CPU, kept apart from the lesson.

Nothing in the lesson (``model``, ``sampling``'s steps, ``tokenizer``, ``config``, ``porting``) imports this
wing, except ``sampling.generate``, which asks it once per call for a faster one-token step. A learner who
never opens it loses no part of the story; the tests hold it to the lesson's results.

* ``decode``: ``decode_step``, the one-token step of ``GPT.forward`` as one flat loop, with two interchangeable
  sets of operations, ``TorchDecodeOps`` (plain PyTorch) and ``KernelDecodeOps`` (the compiled kernel);
* ``kernel``: loads, builds and calls the C code in ``kernel.c`` (``python -m nanogpt_edu.fast.build_kernel``).
"""

from .decode import KernelDecodeOps, TorchDecodeOps, can_decode_flat, decode_step, decode_step_for, pick_ops

__all__ = ["KernelDecodeOps", "TorchDecodeOps", "can_decode_flat", "decode_step", "decode_step_for", "pick_ops"]
