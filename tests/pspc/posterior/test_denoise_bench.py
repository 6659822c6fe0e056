"""bench/denoise.py on a slice: the path rule it reports, and the single pass timed against the
two-pass kernels in the same process (--versus), with the rule restored afterwards."""

import importlib.util
from pathlib import Path

import pytest

from pspc.posterior import gemm, window_kernels
from pspc.posterior.patch_sets import square_patches
from tests.support.data import FASHION_MNIST_ROOT

BENCH = Path(__file__).resolve().parents[3] / "bench" / "denoise.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("denoise_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_names_the_path_the_rule_takes(bench, monkeypatch):
    assert bench._rule(square_patches(28, 28, 3), 1) == "single pass"
    assert bench._rule(square_patches(28, 28, 7), 1) == "fused"
    assert bench._rule(square_patches(28, 28, 28), 1) == "gemm"
    monkeypatch.setattr(window_kernels, "MAX_SPAN", window_kernels.MAX_SPAN)
    monkeypatch.setattr(gemm, "GEMM_MAX_MASKS", gemm.GEMM_MAX_MASKS)
    assert bench._choose_path("fused", square_patches(28, 28, 7)) is None  # on the two passes already
    assert bench._choose_path("fused", square_patches(28, 28, 3)) == "fused (forced)"
    assert bench._rule(square_patches(28, 28, 3), 1) == bench._rule(square_patches(28, 28, 28), 1) == "fused"


@pytest.mark.slow
def test_versus_times_both_kernels_in_one_process_and_compares_their_outputs(bench):
    if not Path(FASHION_MNIST_ROOT).is_dir():
        pytest.skip("Fashion-MNIST not installed")
    args = bench.parse_args(["--limit", "64", "--sizes", "3", "--no-flex", "--batches", "2", "--repeats", "1",
                             "--hogs", "0"])
    (config,) = bench.configurations(args)
    result = bench.measure(config)
    assert result["ran"] == "single pass" and len(result["calls"]["two_pass"]) == 1
    assert result["speedup"] > 0 and result["difference"] < 1e-6
    assert window_kernels.MAX_SPAN > 0  # the rule is back for the next call
    row = bench.table([{**config, **result}]).splitlines()[-1]
    assert "single pass" in row and f"{result['speedup']:.2f}x" in row
