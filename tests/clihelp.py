"""Helpers the CLI test modules share (tests/ is on pytest's pythonpath, see pyproject)."""
from __future__ import annotations

import re
import subprocess
import sys

TIMEOUT = 180


def cli(*args, cwd=None, **kw) -> subprocess.CompletedProcess:
    """``python -m hirestile ARGS`` in a subprocess, output captured as text."""
    return subprocess.run([sys.executable, "-m", "hirestile", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT, **kw)


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    """Exit ``code``, no traceback, and one stderr line ``hirestile: error: ...`` matching ``pattern``."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("hirestile: error: ") and re.search(pattern, lines[0]), lines[0]
