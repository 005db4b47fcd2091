"""``python -m fxquant.numerics.native [-v] [--force]``: build the native kernels ahead of time.

Never fails: when they cannot be built, the reason is printed and pure torch will be used.
``--force`` tries again after a recorded compiler failure; ``-v`` shows the compiler's output.
"""

from __future__ import annotations

import sys

from . import available, build, why_unavailable


def main() -> int:
    try:
        path = build(verbose="-v" in sys.argv[1:], force="--force" in sys.argv[1:])
    except Exception as exc:  # no compiler ...: reported, not fatal
        print(f"fxquant native kernels not built ({type(exc).__name__}: {exc}); "
              "pure torch will be used", file=sys.stderr)
        return 0
    if available():
        print(f"fxquant native kernels: {path}")
    else:
        print(f"fxquant native kernels built in {path} but unusable: {why_unavailable()}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
