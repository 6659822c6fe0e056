"""Planted canaries: the duplicated training set, its record, training and resuming on it, the CLI; and
the thread count a training run keeps."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from auditor.cli import main as auditor_main
from pspc.networks.training import Canaries, TrainingConfig, TrainingError, plant_canaries, train
from tests.support.data import random_training_set
from tests.support.networks import TINY

QUICK = dict(batch_size=8, lr=2e-3, lr_warmup=0, checkpoint_seconds=0, eval_samples=8, preview_samples=0)


def base_set():
    """A 64-image slice, with labels: the base the canaries are chosen from."""
    data = random_training_set(count=64, height=8, width=8, seed=2)
    for i, row in enumerate(data.metadata):
        row["label"] = i % 10
    return data


def test_planted_set_is_the_base_then_rounds_of_the_canaries():
    base = base_set()
    planted, record = plant_canaries(base, Canaries(count=4, repeats=3, seed=7))
    indices = sorted(np.random.default_rng(7).choice(64, 4, replace=False).tolist())
    assert record["indices"] == indices and record["repeats"] == 3 and record["seed"] == 7
    assert len(planted) == 64 + 4 * 3
    assert torch.equal(planted.images[:64], base.images) and planted.ids[:64] == base.ids
    for r in range(3):
        for j, i in enumerate(indices):
            row = 64 + 4 * r + j
            assert torch.equal(planted.images[row], base.images[i])
            assert planted.ids[row] == f"{base.ids[i]}#copy{r + 1}"
            assert planted.metadata[row]["label"] == i % 10
    counts = {i: sum(torch.equal(image, base.images[i]) for image in planted.images) for i in indices}
    assert counts == {i: 4 for i in indices}  # each canary 1 + repeats times
    assert record["ids"] == [base.ids[i] for i in indices]
    assert record["sha256"] == [base.image_sha256(i) for i in indices]
    assert record["labels"] == [str(i % 10) for i in indices]
    assert record["base"] == base.describe() and "76 images" in record["layout"]
    assert plant_canaries(base, Canaries(4, 3, 8))[1]["indices"] != indices  # the seed chooses


def test_canaries_that_cannot_be_planted_are_refused():
    with pytest.raises(TrainingError, match="count >= 1 and repeats >= 1"):
        Canaries(count=0, repeats=5)
    with pytest.raises(TrainingError, match="count >= 1 and repeats >= 1"):
        Canaries(count=2, repeats=0)
    with pytest.raises(TrainingError, match="5 canaries asked of a training set of 4 images"):
        plant_canaries(random_training_set(count=4, height=8, width=8), Canaries(5, 2))


@pytest.mark.slow
def test_training_on_canaries_records_them_and_resumes_only_with_the_same(tmp_path):
    base, canaries = base_set(), Canaries(count=3, repeats=5, seed=1)
    out = tmp_path / "canary.pt"
    record = train(base, out, TINY, TrainingConfig(iterations=2, **QUICK), canaries=canaries)
    planted, expected = plant_canaries(base, canaries)
    assert record["canaries"] == expected and json.loads(out.with_suffix(".json").read_text()) == record
    assert record["dataset"]["fingerprint"] == planted.fingerprint and record["dataset"]["count"] == 64 + 15
    assert record["epochs"] == round(2 * 8 / 79, 3)
    with pytest.raises(TrainingError, match="canaries"):  # other canaries: other data
        train(base, out, None, TrainingConfig(iterations=3, **QUICK), resume=True, canaries=Canaries(3, 5, seed=2))
    with pytest.raises(TrainingError, match="fingerprint"):  # the same base without its canaries
        train(base, out, None, TrainingConfig(iterations=3, **QUICK), resume=True)
    resumed = train(base, out, None, TrainingConfig(iterations=3, **QUICK), resume=True, canaries=canaries)
    assert resumed["iterations"] == 3 and resumed["canaries"] == expected


@pytest.mark.slow
def test_cli_plants_canaries_and_refuses_half_a_request(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (80, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "data.npy", images)
    out = tmp_path / "net.pt"
    common = ["train-network", "--data", str(tmp_path / "data.npy"), "--limit", "64", "--out", str(out),
              "--batch", "4", "--channels", "8", "--preview", "0", "--threads", "1", "--iterations", "1"]
    assert auditor_main(common + ["--canaries", "3", "--canary-repeats", "2", "--canary-seed", "5"]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["canaries"]["indices"] == sorted(np.random.default_rng(5).choice(64, 3, replace=False).tolist())
    assert record["canaries"]["repeats"] == 2 and record["dataset"]["count"] == 64 + 6
    assert record["canaries"]["base"]["count"] == 64
    assert f"training-set indices {', '.join(map(str, record['canaries']['indices']))}, each 3 times" in printed
    assert auditor_main(common + ["--out", str(tmp_path / "b.pt"), "--canary-repeats", "2"]) == 2
    assert "--canary-repeats and --canary-seed need --canaries N" in capsys.readouterr().err
    assert auditor_main(common + ["--out", str(tmp_path / "c.pt"), "--canaries", "0"]) == 2
    assert "--canaries must be > 0" in capsys.readouterr().err
    assert auditor_main(common + ["--out", str(tmp_path / "d.pt"), "--canaries", "65"]) == 2
    assert "65 canaries asked of a training set of 64 images" in capsys.readouterr().err


@pytest.mark.slow
def test_training_keeps_the_thread_count_it_was_given(tmp_path):
    """Writing a record reads numba's thread count, whose first read resets torch's to every core: a
    fresh interpreter (numba not started yet) must still train with the one thread it was given."""
    script = (
        "import sys, torch\n"
        "from pspc.networks.training import TrainingConfig, train\n"
        "from tests.support.data import random_training_set\n"
        "from tests.support.networks import TINY\n"
        "torch.set_num_threads(1)\n"
        f"config = TrainingConfig(iterations=2, **{QUICK!r})\n"
        "record = train(random_training_set(count=8, height=8, width=8), sys.argv[1], TINY, config)\n"
        "print(record['torch_threads'], torch.get_num_threads())\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "net.pt")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[3], timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]
