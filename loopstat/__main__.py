"""``python -m loopstat``: see loopstat.cli.main."""

import sys

from loopstat.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
