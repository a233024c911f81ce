"""Committed scripts, results and docs name data by ``../shared/data`` or ``$AL_DATA_DIR``, never by one machine's
absolute path (issue 12 item 7): a reader elsewhere must be able to run the command as printed."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: An absolute path to a data folder: /work/..., /home/..., /root/..., /Users/... ahead of "shared" or "data".
ABSOLUTE_DATA = re.compile(r"(?<![\w.])/(?:work|home|root|Users|mnt)/[^\s`'\"]*(?:shared|data)")


def test_no_committed_file_quotes_an_absolute_data_path():
    files = [ROOT / "README.md", ROOT / "Makefile", *ROOT.glob("benchmarks/**/*"), *ROOT.glob("notebooks/*")]
    found = []
    for f in files:
        if f.is_file() and f.suffix in {".md", ".py", ".json", ".ipynb", ".txt", ""}:
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                if ABSOLUTE_DATA.search(line):
                    found.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not found, "use ../shared/data or $AL_DATA_DIR instead of:\n" + "\n".join(found)
