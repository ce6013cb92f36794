"""``python -m dpskit``: the same command line as the ``dpskit`` script."""

import sys

from dpskit.cli import main

if __name__ == "__main__":
    sys.exit(main())
