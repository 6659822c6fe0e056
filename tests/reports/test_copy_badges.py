"""No red copy badge comes from an uncalibrated descriptor threshold (issue 17): the nearest-images
table shows the descriptor's SSCD-convention thresholds as plain text, not as a verdict."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "reports" / "templates"


def test_the_copies_table_has_no_verdict_column_and_no_red_chip():
    text = (TEMPLATES / "_copies.html").read_text()
    assert "<th>Verdict</th>" not in text
    assert "chip failed" not in text
    assert "not calibrated for this descriptor" in text
