"""The argument parser every ``python -m al.*`` command uses: a usage error is one line, with a hint, and exit
code 2 (as argparse's own, without the usage block)."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
