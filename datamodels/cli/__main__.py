"""``python -m datamodels.cli ...``: the command line, as the ``datamodels`` script runs it."""

import sys

from datamodels.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
