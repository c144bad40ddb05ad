"""`python -m harness`: see envmatrix_harness/cli.py and envmatrix_harness/README.md."""

import time

# Before the harness's own imports (numpy among them): where interpreter start-up ends.
STARTED_AT = time.time()

import sys  # noqa: E402

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(started_at=STARTED_AT))
