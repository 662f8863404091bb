"""Where the repository and its test samples are."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SAMPLES = REPO / "tests" / "samples"
