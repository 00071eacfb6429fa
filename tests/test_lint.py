"""Style is part of the test command, so CI and a contributor's run agree."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.server_process import REPO


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_is_clean(command: list[str]) -> None:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is in requirements.txt; install it"
    result = subprocess.run([ruff, *command], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
