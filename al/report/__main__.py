"""``python -m al.report``: see :func:`al.report.cli.main`."""

import sys

from .cli import main

sys.exit(main())
