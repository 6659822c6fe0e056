"""Where the repository is (tests run scripts and read files from its root)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
