"""Where the repository and its test samples are, and the tools a test needs."""

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
SAMPLES = REPO / "tests" / "samples"


def sample(name: str) -> str:
    """A node file sample from tests/samples (copies of real node files)."""
    return (SAMPLES / name).read_text()


def which(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} not installed (scripts/setup.sh installs it)")
    return path
