"""Style is part of the test command, so CI and a contributor's run agree."""

from __future__ import annotations

import shutil
import subprocess

from tests.server_process import REPO


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is in requirements.txt; install it"
    result = subprocess.run([ruff, "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
