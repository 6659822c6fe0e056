"""The service's HTML pages: the common response checks, and where artifacts (screenshots) go."""

from __future__ import annotations

import os
from pathlib import Path


def assert_page(response, status: int = 200, *words: str) -> str:
    assert response.status_code == status, response.text[:2000]
    assert response.headers["content-type"].startswith("text/html")
    for word in words:
        assert word in response.text, word
    return response.text


def artifacts_dir(tmp_path: Path) -> Path:
    """Where tests keep artifacts (screenshots): $PSPC_TEST_ARTIFACTS, else a temporary folder."""
    folder = Path(os.environ.get("PSPC_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
