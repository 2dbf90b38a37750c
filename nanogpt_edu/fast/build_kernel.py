"""Build the decode kernel of ``nanogpt_edu.fast.kernel`` now and say in one line what happened.

    python -m nanogpt_edu.fast.build_kernel

``make setup`` runs this, so the first generation never waits for the compiler. Safe to run again: a kernel
already built for this machine is kept.
"""

from .kernel import build_kernel

if __name__ == "__main__":
    print(build_kernel())
