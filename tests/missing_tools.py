"""What a test does when a tool it needs is not on this machine: fail, saying how to get it, unless its
``VLM_SKIP_...`` variable asks to skip it on purpose (a missing tool must not pass for a passing test)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def tool_missing(what: str, how: str, skip_variable: str) -> NoReturn:
    """``what`` is not here: ``how`` gets it; ``skip_variable``=1 skips instead."""
    if os.environ.get(skip_variable) == "1":
        pytest.skip(f"{what} is missing and {skip_variable}=1")
    pytest.fail(f"{what} is missing: {how} (or set {skip_variable}=1 to skip on purpose)", pytrace=False)
