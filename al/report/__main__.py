"""``python -m al.report``: see :func:`al.report.main`."""

import sys

from . import main

sys.exit(main())
