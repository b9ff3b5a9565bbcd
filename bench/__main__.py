"""``python -m bench``: the load-test and benchmark commands (``bench.cli``)."""

from bench.cli import app

if __name__ == "__main__":
    app()
