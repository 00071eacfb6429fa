"""The README's set-up commands agree with what the project requires, so following them gives what CI tests."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.server_process import REPO

pytestmark = pytest.mark.unit


def required_torch(lines: list[str]) -> SpecifierSet:
    (torch,) = [Requirement(line) for line in lines if re.match(r"torch\b", line)]
    return torch.specifier


def test_the_readmes_cpu_torch_is_one_requirements_txt_keeps() -> None:
    """A torch from PyTorch's CPU index above requirements.txt's bound is replaced by PyPI's CUDA build (gigabytes
    of NVIDIA packages), the very thing the README's CPU line is there to avoid."""
    required = required_torch((REPO / "requirements.txt").read_text().splitlines())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert required_torch(project) == required, "pyproject.toml and requirements.txt ask for the same torch"
    readme = (REPO / "README.md").read_text()
    asked = re.findall(r'pip install "(torch[^"]*)" --index-url https://download\.pytorch\.org/whl/cpu', readme)
    assert asked, "the README installs torch from PyTorch's CPU index"
    candidates = [Version(f"{major}.{minor}.{patch}") for major in (2, 3) for minor in range(25) for patch in range(4)]
    for line in asked:
        installable = Requirement(line).specifier
        assert not [v for v in candidates if v in installable and v not in required], line
