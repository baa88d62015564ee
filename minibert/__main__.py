"""``python -m minibert VERB ...``: the same command line as the ``minibert`` console script."""
import sys

from minibert.cli import main

sys.exit(main())
