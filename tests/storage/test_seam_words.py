"""Nothing above server/storage/ speaks of one backend's mechanics (issue 25, the seam).

A rename, a temp file or SQLite is one backend's business: the code, the
docstrings and the crash point names above the seam speak of blobs written,
sealed and published, and of a metadata store.
"""

from __future__ import annotations

import re
from pathlib import Path

from server import crashpoints

SERVER = Path(__file__).resolve().parents[2] / "server"
STORAGE = SERVER / "storage"
#: Words of the folder store and of SQLite (whole words, any case).
BACKEND_WORDS = re.compile(r"\b(sqlite3?|renam(e|ed|es|ing)|temp|temps|tmp)\b", re.IGNORECASE)


def _above_the_seam() -> list[Path]:
    return [path for path in sorted(SERVER.rglob("*.py")) if STORAGE not in path.parents]


def test_no_module_above_the_seam_names_a_backend_mechanism():
    found = [
        f"{path.relative_to(SERVER.parent)}:{number}: {line.strip()}"
        for path in _above_the_seam()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if BACKEND_WORDS.search(line)
    ]
    assert found == []


def test_crash_points_are_named_in_the_seam_words():
    assert [point for point in sorted(crashpoints.POINTS) if BACKEND_WORDS.search(point)] == []
    assert {"write.begun", "write.sealed", "publish.placed", "publish.durable"} <= crashpoints.POINTS
