"""The Quick start's progress when its output is not a terminal: a plain, flushed line per step
(a progress bar only draws on a terminal, so a log or a pipe saw nothing for minutes)."""

import io

import numpy as np
import pytest

from auditor.workflows import quickstart


def test_step_lines_writes_one_line_per_step():
    stream, ticks = io.StringIO(), iter([10.0, 12.4, 19.6, 31.0])
    progress = quickstart.step_lines(3, stream, clock=lambda: next(ticks))
    for _ in range(3):
        progress(1)
    assert stream.getvalue().splitlines() == ["sampling: step 1/3 recorded (2 s)", "sampling: step 2/3 recorded (10 s)",
                                              "sampling: step 3/3 recorded (21 s)"]


@pytest.mark.slow
def test_quickstart_without_a_terminal_prints_each_step(tmp_path, capsys):
    from auditor import cli

    data = tmp_path / "images.npy"
    np.save(data, np.random.default_rng(2).integers(0, 256, (20, 8, 8), dtype=np.uint8))
    argv = ["--db", str(tmp_path / "store.duckdb"), "quickstart", "--data", str(data), "--num", "1", "--steps", "3",
            "--no-serve"]
    assert cli.main(argv) == 0  # under pytest, stderr is not a terminal
    out, err = capsys.readouterr()
    steps = [line for line in err.splitlines() if line.startswith("sampling: step ")]
    assert [line.split(" recorded")[0] for line in steps] == [f"sampling: step {k}/3" for k in (1, 2, 3)]
    assert "recording 1 PSPC-Square samples x 3 steps" in out and "sample report: http://" in out
