"""``python -m ferroflow``: the same command line as the ``ferroflow`` script."""

from __future__ import annotations

from ferroflow.cli import main

if __name__ == "__main__":
    main()
