"""``python -m zerank_core.cli``: the same as the ``zerank`` command."""

import sys

from zerank_core.cli import main

sys.exit(main())
