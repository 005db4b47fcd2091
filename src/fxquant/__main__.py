"""``python -m fxquant`` is the ``fxquant`` command line."""

from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m fxquant"))
