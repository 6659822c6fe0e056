"""Network comparisons (auditor.workflows.comparison): shared noise, the network-explained run, per-step
agreement, similarity scores and copy matches, against slow references written here; the
0006 migration from 0005 with data kept; `auditor compare`.

The network is `TinyDenoiser` (tests.support.networks), a module with the EDM interface
net(z, sigma): EDM's preconditioning around a fixed random smooth map, so that D(z, t) is
non-trivial and costs microseconds (a convolutional U-Net, even a tiny one, takes seconds per
call on a loaded 2-core machine: its oneDNN threads spin). The data are 12 random 8x8 images
with x-flips (tests.support.data.random_set).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from auditor.similarity.copy_detection import DEFAULT_THRESHOLDS
from auditor.similarity.descriptors import PixelCorrelationDescriptor
from auditor.store import attribution, comparisons, database
from auditor.store.networks import register_network
from auditor.store.recorder import ExplainedRecorder, from_blob
from auditor.workflows import comparison, sampling as runs
from auditor.workflows.options import AuditOptions, ComparisonOptions
from pspc.denoisers import NetworkDenoiser, build_denoiser
from pspc.networks import EDMPrecond, NetworkConfig, NetworkError, export_torchscript, save_network
from pspc.record import module_sha256
from pspc.posterior.patch_sets import flex_patches
from pspc.schedules import default_flex_schedule, write_schedule_file
from pspc.posterior.sensitivity import network_sensitivity
from pspc.samplers import SamplerConfig, initial_noise, sample
from tests.support.cli import run_cli
from tests.support.data import random_set
from tests.support.networks import SHAPE, tiny_network
from tests.support.store import check_views, fetch, fill_tiny_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = dict(num_samples=2, steps=5, seed=5, patch_size=3, top_k=64, mass=1.0)  # full weights: exact recomposition
DESCRIPTOR = "pixel-correlation:8"


def tiny_unet(image_shape=SHAPE, seed: int = 0) -> EDMPrecond:
    """An untrained EDMPrecond with its zero-initialised layers set to small random weights."""
    torch.manual_seed(seed)
    net = EDMPrecond(NetworkConfig(image_channels=image_shape[0], resolution=image_shape[1:], model_channels=8,
                                   channel_mult=(1, 2), attention_levels=(), num_blocks=1))
    with torch.no_grad():
        for parameter in net.parameters():
            if parameter.ndim > 1 and not parameter.abs().sum():
                parameter.normal_(0, 0.05)
    return net.eval()


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    db = tmp_path_factory.mktemp("compare") / "provenance.duckdb"
    database.upgrade(db)
    data, net = random_set(), tiny_network()
    result = comparison.record_comparison(db, data, net, options=ComparisonOptions(
        denoisers=("pspc-square", "gaussian"), descriptor=DESCRIPTOR, copy_k=3, **OPTIONS))
    return db, data, net, result


def stored_steps(db, run_id):
    rows = fetch(db, "SELECT sample_index, step, t, t_next, z, denoised FROM steps WHERE run_id = ? "
                     "ORDER BY sample_index, step", [run_id])
    return {(s, k): (t, t_next, from_blob(z, SHAPE), from_blob(d, SHAPE)) for s, k, t, t_next, z, d in rows}


def stored_agreement(db, run_id):
    rows = fetch(db, "SELECT sample_index, step, t, network_denoised, mse, max_abs_error FROM step_agreement "
                     "WHERE run_id = ? ORDER BY sample_index, step", [run_id])
    return {(s, k): (t, from_blob(n, SHAPE), mse, err) for s, k, t, n, mse, err in rows}


def final_images(db, run_id):
    rows = fetch(db, "SELECT final_image FROM samples WHERE run_id = ? ORDER BY sample_index", [run_id])
    return torch.stack([from_blob(r[0], SHAPE) for r in rows])


# ---------------------------------------------------------------------------------------
# What is stored
# ---------------------------------------------------------------------------------------
def test_runs_are_linked_with_kinds_and_network(compared):
    db, data, net, result = compared
    assert set(result.run_ids) == {"network", "pspc-square", "gaussian"}
    links = dict(fetch(db, "SELECT role, run_id FROM comparison_runs WHERE comparison_id = ?", [result.comparison_id]))
    assert links == result.run_ids
    kinds = dict(fetch(db, "SELECT id, kind FROM runs"))
    assert kinds == {result.run_ids["network"]: "network-explained", result.run_ids["pspc-square"]: "pspc",
                     result.run_ids["gaussian"]: "samples-only"}
    assert {s for (s,) in fetch(db, "SELECT status FROM runs")} == {"complete"}
    assert fetch(db, "SELECT status, seed, num_samples FROM comparisons") == [("complete", 5, 2)]
    (network_id, fingerprint, sha256, kind, source, c, h, w), = fetch(
        db, "SELECT id, fingerprint, sha256, kind, source, channels, height, width FROM networks")
    assert (kind, source, (c, h, w)) == ("module", None, SHAPE)
    assert sha256 == module_sha256(net)
    assert fetch(db, "SELECT network_id FROM runs WHERE id = ?", [result.run_ids["network"]]) == [(network_id,)]
    details = json.loads(fetch(db, "SELECT details FROM runs WHERE id = ?", [result.run_ids["network"]])[0][0])
    assert details["comparison_id"] == result.comparison_id and details["role"] == "network"
    # registering the same network again finds it; another one (other weights) is new
    assert register_network(db, NetworkDenoiser(net, SHAPE)) == network_id
    assert register_network(db, NetworkDenoiser(tiny_network(seed=1), SHAPE)) != network_id


def test_shared_noise_is_really_shared(compared):
    db, data, net, result = compared
    z0 = initial_noise(OPTIONS["num_samples"], SHAPE, OPTIONS["seed"], 80.0)
    network_steps = stored_steps(db, result.run_ids["network"])
    pspc_steps = stored_steps(db, result.run_ids["pspc-square"])
    for i in range(OPTIONS["num_samples"]):
        assert torch.equal(network_steps[(i, 0)][2], pspc_steps[(i, 0)][2])
        assert torch.equal(network_steps[(i, 0)][2], z0[i])
    # the samples-only run sampled the Gaussian denoiser from the same noise
    gaussian = build_denoiser("gaussian", data)
    expected = sample(gaussian, z0, SamplerConfig(num_steps=OPTIONS["steps"]))
    assert torch.allclose(final_images(db, result.run_ids["gaussian"]), expected, atol=1e-6)


def test_network_run_follows_the_networks_own_trajectory(compared):
    db, data, net, result = compared
    network = NetworkDenoiser(net, SHAPE)
    config = SamplerConfig(num_steps=OPTIONS["steps"])
    steps, agreement = stored_steps(db, result.run_ids["network"]), stored_agreement(db, result.run_ids["network"])
    for (i, k), (t, t_next, z, _) in steps.items():
        net_d = agreement[(i, k)][1]
        assert torch.allclose(net_d, network(z[None], t)[0], atol=1e-6)  # the network's D on the stored z_t
        if (i, k + 1) in steps:  # Euler step with the network's D, not PSPC's
            assert torch.allclose(steps[(i, k + 1)][2], z + (t_next - t) * (z - net_d) / t, atol=1e-5)
    # the final images are the network's own samples from the shared noise
    z0 = initial_noise(OPTIONS["num_samples"], SHAPE, OPTIONS["seed"], 80.0)
    assert torch.allclose(final_images(db, result.run_ids["network"]), sample(network, z0, config), atol=1e-6)


def test_stored_mse_equals_recomputation(compared):
    db, _, _, result = compared
    steps, agreement = stored_steps(db, result.run_ids["network"]), stored_agreement(db, result.run_ids["network"])
    assert agreement.keys() == steps.keys()
    for key, (t, net_d, mse, max_abs) in agreement.items():
        pspc_d = steps[key][3]
        differences = [float(a) - float(b) for a, b in zip(net_d.flatten().tolist(), pspc_d.flatten().tolist())]
        assert t == steps[key][0]
        assert mse == pytest.approx(sum(d * d for d in differences) / len(differences), rel=1e-12)
        assert max_abs == pytest.approx(max(abs(d) for d in differences), rel=1e-12)
    table = comparisons.agreement_table(db, result.run_ids["network"])
    assert [r["step"] for r in table] == list(range(OPTIONS["steps"]))
    for row in table:
        per_sample = [agreement[(i, row["step"])][2] for i in range(OPTIONS["num_samples"])]
        assert row["mse"] == pytest.approx(np.mean(per_sample)) and row["max_mse"] == pytest.approx(max(per_sample))
        assert row["mass"] == pytest.approx(1.0, abs=1e-5)  # full weights


def test_network_run_weights_recompose_pspc_on_the_networks_states(compared):
    db, data, _, result = compared
    run_id = result.run_ids["network"]
    pspc = build_denoiser("pspc-square", data, patch_size=3)
    for (i, k), (t, _, z, stored_d) in stored_steps(db, run_id).items():
        assert torch.allclose(stored_d, pspc(z[None], t)[0], atol=1e-6)  # steps.denoised = PSPC's D(z_t)
        recomposed, stored, bound = attribution.recompose_step(db, run_id, i, k, data)
        assert torch.equal(stored, stored_d.double())
        assert (recomposed - stored).abs().max() <= 1e-5 + bound.max()
        assert (recomposed - stored).abs().max() < 1e-5
    # every view works on the network run: the final attribution holds all the mass
    for i in range(OPTIONS["num_samples"]):
        shares = attribution.sample_sources(db, run_id, i, top=100)
        assert sum(r["share"] for r in shares) == pytest.approx(1.0, abs=1e-5)
        assert attribution.trajectory_sources(db, run_id, i)


def test_similarity_scores_match_the_descriptor(compared):
    db, _, _, result = compared
    descriptor = PixelCorrelationDescriptor(8)
    finals = {role: descriptor(final_images(db, run_id)) for role, run_id in result.run_ids.items()}
    rows = fetch(db, "SELECT run_a, run_b, sample_index, descriptor, descriptor_fingerprint, preprocessing, score, "
                     "thresholds, flag, flagged, comparison_id FROM similarity_scores ORDER BY ALL")
    role = {v: k for k, v in result.run_ids.items()}
    assert len(rows) == 3 * OPTIONS["num_samples"]  # every pair of the three runs
    for run_a, run_b, i, name, fingerprint, preprocessing, score, thresholds, flag, flagged, cid in rows:
        assert run_a < run_b and cid == result.comparison_id
        expected = float(finals[role[run_a]][i] @ finals[role[run_b]][i])
        assert score == pytest.approx(expected, abs=1e-6)
        assert name == descriptor.name and fingerprint == descriptor.fingerprint
        assert json.loads(preprocessing) == descriptor.describe()["preprocessing"]
        assert json.loads(thresholds) == [0.5, 0.6]
        assert flagged == (score >= 0.5)
        assert flag == (0.6 if score >= 0.6 else 0.5 if score >= 0.5 else None)
    assert fetch(db, "SELECT name, kind, dimension FROM descriptors") == [(descriptor.name, "pixel-correlation", 64)]


def test_copy_matches_equal_brute_force_search(compared):
    db, data, _, result = compared
    descriptor = PixelCorrelationDescriptor(8)
    entries = data.entry_images(torch.float32)  # images then their mirrors
    library = descriptor(entries)
    for run_id in result.run_ids.values():
        queries = descriptor(final_images(db, run_id))
        rows = fetch(db, "SELECT sample_index, rank, image_index, flip, score, flagged FROM copy_matches "
                         "WHERE run_id = ? ORDER BY sample_index, rank", [run_id])
        assert len(rows) == 3 * OPTIONS["num_samples"]
        for i in range(OPTIONS["num_samples"]):
            scores = (library @ queries[i]).tolist()
            best = sorted(range(len(scores)), key=lambda e: -scores[e])[:3]
            mine = [r for r in rows if r[0] == i]
            assert [r[4] for r in mine] == pytest.approx([scores[e] for e in best], abs=1e-5)
            assert [(r[2], r[3]) for r in mine] == [(e % len(data), e >= len(data)) for e in best]
            assert all(r[5] == (r[4] >= 0.5) for r in mine)


def test_sample_counterpart_for_the_report(compared):
    db, _, _, result = compared
    pspc_run, network_run = result.run_ids["pspc-square"], result.run_ids["network"]
    mine = comparisons.sample_counterpart(db, pspc_run, 1)
    assert (mine["counterpart_run_id"], mine["counterpart_role"], mine["network_run_id"]) == (network_run, "network",
                                                                                             network_run)
    assert torch.equal(mine["image"], final_images(db, network_run)[1])
    assert [s["step"] for s in mine["steps"]] == list(range(OPTIONS["steps"]))
    (score,) = fetch(db, "SELECT score FROM similarity_scores WHERE run_a = ? AND run_b = ? AND sample_index = 1",
                     [min(pspc_run, network_run), max(pspc_run, network_run)])
    assert mine["similarity"][0]["score"] == score[0] if isinstance(score, tuple) else score
    assert mine["similarity"][0]["descriptor_record"]["kind"] == "pixel-correlation"
    theirs = comparisons.sample_counterpart(db, network_run, 0)
    assert theirs["counterpart_run_id"] == pspc_run  # the PSPC run, not the samples-only one
    summary = comparisons.comparison_summary(db, result.comparison_id)
    assert summary["status"] == "complete" and set(summary["runs"]) == set(result.run_ids)
    assert len(summary["similarity"]) == 3 and len(summary["copies"]) == 3 * OPTIONS["num_samples"]


@pytest.mark.slow
def test_heun_network_run_matches_the_networks_heun_samples(tmp_path):
    db = tmp_path / "heun.duckdb"
    database.upgrade(db)
    data, net = random_set(), tiny_network()
    result = comparison.record_comparison(db, data, net, options=ComparisonOptions(
        num_samples=2, steps=3, seed=1, sampler="heun", patch_size=3, descriptor=DESCRIPTOR, copy_k=0))
    z0 = initial_noise(2, SHAPE, 1, 80.0)
    expected = sample(NetworkDenoiser(net, SHAPE), z0, SamplerConfig(method="heun", num_steps=3))
    assert torch.allclose(final_images(db, result.network_run_id), expected, atol=1e-6)
    assert fetch(db, "SELECT count(*) FROM copy_matches") == [(0,)]  # copy_k = 0 skips copy detection


# ---------------------------------------------------------------------------------------
# Failures and bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_failure_marks_run_and_comparison_failed_and_resume_is_refused(tmp_path, monkeypatch):
    db = tmp_path / "fail.duckdb"
    database.upgrade(db)

    def boom(self, conn, step):
        if step == 2:
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(ExplainedRecorder, "_write_extras", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        comparison.record_comparison(db, random_set(), tiny_network(),
                                     options=ComparisonOptions(descriptor=DESCRIPTOR, **OPTIONS))
    (status, error), = fetch(db, "SELECT status, error FROM comparisons")
    assert status == "failed" and "disk on fire" in error
    assert fetch(db, "SELECT id, kind, status FROM runs") == [(1, "network-explained", "failed")]
    assert fetch(db, "SELECT max(step) FROM steps") == [(1,)]  # step 2's transaction was rolled back
    with pytest.raises(database.StoreError, match="only PSPC sampling runs can be resumed"):
        runs.resume_run(db, 1, random_set())


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    db = tmp_path / "bad.duckdb"
    database.upgrade(db)
    data, net = random_set(), tiny_network()
    cases = [
        (dict(network=tiny_unet((1, 28, 28))), NetworkError, "28x28"),
        (dict(denoisers=("pspc-square", "magic")), ValueError, "unknown denoiser"),
        (dict(denoisers=("gaussian", "gaussian")), ValueError, "repeat"),
        (dict(explainer="gaussian"), ValueError, "posterior weights"),
        (dict(thresholds=(0.5, 1.5)), ValueError, r"\[-1, 1\]"),
        (dict(top_k=0), ValueError, "top_k"),
        (dict(descriptor="nonsense-descriptor"), ValueError, "unknown descriptor"),
        (dict(num_samples=0), ValueError, "num_samples"),
    ]
    for change, error, message in cases:
        options = {**OPTIONS, "descriptor": DESCRIPTOR, "network": net, **change}
        with pytest.raises(error, match=message):
            comparison.record_comparison(db, data, options.pop("network"), options=ComparisonOptions(**options))
    for table in ("runs", "comparisons", "networks", "datasets"):
        assert fetch(db, f"SELECT count(*) FROM {table}") == [(0,)], table


def test_option_defaults_are_the_libraries():
    """The options' copy thresholds are copy detection's defaults; the CLI's defaults are the options'."""
    assert ComparisonOptions().thresholds == AuditOptions().thresholds == DEFAULT_THRESHOLDS
    from auditor.cli.parser import build_parser

    args = build_parser().parse_args(["compare"])
    assert (args.num, args.steps, args.sampler, args.top_k, args.mass, args.copy_k, args.sensitivity_draws) == (
        16, 18, "euler", 16, 0.99, 5, 4)
    assert args.thresholds == "0.5,0.6" and args.denoisers == "pspc-square"


# ---------------------------------------------------------------------------------------
# Tuned schedules and PSPC-Flex from the network's own sensitivity
# ---------------------------------------------------------------------------------------
def test_flex_explainer_takes_its_masks_from_the_networks_sensitivity():
    data, net = random_set(), NetworkDenoiser(tiny_network(), SHAPE)
    flex = comparison.build_pspc("pspc-flex", data, net, sensitivity_draws=2, seed=3)
    assert flex.describe()["schedule"]["sensitivity"]["kind"] == "network-eq8"
    t = 0.5  # lambda(t) < 1: the masks come from G(t) of the network
    z = data.as_float()[:2] + t * torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    g = network_sensitivity(net, data, t, num_samples=2, seed=3)
    lam = default_flex_schedule()(t)
    reference = build_denoiser("pspc-square", data, patch_size=3)  # only for its patch_set plumbing
    reference.patch_set_at = lambda _t: flex_patches(g, lam)
    expected = reference(z, torch.full((2,), t, dtype=torch.float64))
    assert torch.allclose(flex(z, torch.full((2,), t, dtype=torch.float64)), expected, atol=1e-6)
    # without a network: the isotropic stand-in, as `pspc sample --denoiser pspc-flex`
    assert comparison.build_pspc("pspc-flex", data).describe()["schedule"]["sensitivity"] == "isotropic-fig3"
    with pytest.raises(ValueError, match="posterior weights"):
        comparison.build_pspc("gaussian", data, net)
    with pytest.raises(ValueError, match="sensitivity_draws"):
        comparison.build_pspc("pspc-flex", data, net, sensitivity_draws=0)


@pytest.mark.slow
def test_comparison_uses_a_tuned_schedule_file(tmp_path):
    db = tmp_path / "tuned.duckdb"
    database.upgrade(db)
    data, net = random_set(), tiny_network()
    config = SamplerConfig(num_steps=3)
    times = config.time_steps()[:-1].tolist()
    schedule = write_schedule_file(tmp_path / "schedule.json", [{"t": t, "patch_size": s} for t, s in zip(times, (8, 5, 3))],
                                   name="tuned-test", resolution=(8, 8))
    result = comparison.record_comparison(db, data, net, options=ComparisonOptions(
        num_samples=1, steps=3, seed=2, top_k=64, mass=1.0, schedule=schedule, descriptor=DESCRIPTOR, copy_k=0))
    for run_id in (result.network_run_id, result.run_ids["pspc-square"]):
        (denoiser,), = fetch(db, "SELECT denoiser FROM runs WHERE id = ?", [run_id])
        assert json.loads(denoiser)["schedule"]["patch_size"]["name"] == "tuned-test"
        sizes = [json.loads(d)["size"][0] for (d,) in fetch(
            db, "SELECT p.description FROM steps s JOIN patch_sets p ON p.id = s.patch_set_id "
                "WHERE s.run_id = ? AND s.sample_index = 0 ORDER BY s.step", [run_id])]
        assert sizes == [8, 5, 3]
    (config_json,), = fetch(db, "SELECT config FROM comparisons")
    assert json.loads(config_json)["schedule"] == str(schedule)
    # a file without the explainer's column, or for other images, is refused before anything is written
    empty = tmp_path / "empty.duckdb"
    database.upgrade(empty)
    lambdas = write_schedule_file(tmp_path / "lambda.json", [{"t": t, "lambda": 0.5} for t in times])
    with pytest.raises(ValueError, match="no 'patch_size'"):
        comparison.record_comparison(empty, data, net, options=ComparisonOptions(
            num_samples=1, steps=3, schedule=lambdas, descriptor=DESCRIPTOR, copy_k=0))
    other = write_schedule_file(tmp_path / "other.json", [{"t": t, "patch_size": 3} for t in times], resolution=(28, 28))
    with pytest.raises(ValueError, match="28x28"):
        comparison.record_comparison(empty, data, net, options=ComparisonOptions(
            num_samples=1, steps=3, schedule=other, descriptor=DESCRIPTOR, copy_k=0))
    assert fetch(empty, "SELECT count(*) FROM runs") == [(0,)]


# ---------------------------------------------------------------------------------------
# Migration 0006
# ---------------------------------------------------------------------------------------
NEW_TABLES = {"networks", "comparisons", "comparison_runs", "step_agreement", "descriptors", "similarity_scores",
              "copy_matches"}


def tables(db):
    return {name for (name,) in fetch(db, "SELECT table_name FROM duckdb_tables()")}


@pytest.mark.slow
def test_upgrade_from_0005_keeps_data_and_down_again(tmp_path):
    db = tmp_path / "store.duckdb"
    database.upgrade(db, "0004")
    info = fill_tiny_store(db)  # plain SQL; revision 0005 derives its step_shares
    assert database.upgrade(db, "0005") == ("0004", "0005")
    data_tables = ("datasets", "training_images", "runs", "samples", "steps", "patch_weights", "patch_pixels",
                   "step_shares")
    before = {t: fetch(db, f"SELECT * FROM {t} ORDER BY ALL") for t in data_tables}
    assert database.upgrade(db) == ("0005", database.head_revision())
    after = {t: fetch(db, f"SELECT * EXCLUDE (kind, network_id, details) FROM {t} ORDER BY ALL" if t == "runs"
                      else f"SELECT * FROM {t} ORDER BY ALL") for t in data_tables}
    assert after == before
    assert fetch(db, "SELECT kind, network_id, details FROM runs") == [("pspc", None, None)]
    assert NEW_TABLES <= tables(db)
    check_views(db, info)
    # a comparison recorded on top, then down to 0005: the new tables go, the rest stays
    comparison.record_comparison(db, random_set(), tiny_network(), options=ComparisonOptions(
        num_samples=1, steps=2, patch_size=3, descriptor=DESCRIPTOR, copy_k=1))
    assert fetch(db, "SELECT count(*) FROM step_agreement")[0][0] == 2
    runs_before = fetch(db, "SELECT id, kind FROM runs ORDER BY id")
    assert database.upgrade(db, "0005") == (database.head_revision(), "0005")
    assert not NEW_TABLES & tables(db)
    check_views(db, info)
    assert database.upgrade(db) == ("0005", database.head_revision())  # the kept runs columns are reused
    assert fetch(db, "SELECT id, kind FROM runs ORDER BY id") == runs_before


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    data = tmp_path / "tiny.npy"
    np.save(data, random_set().images.numpy())
    network = export_torchscript(tiny_network(), tmp_path / "tiny.pt", SHAPE)
    db = tmp_path / "cli.duckdb"
    database.upgrade(db)
    return db, data, network


@pytest.mark.slow
def test_cli_compare_prints_runs_and_agreement(files, capsys):
    db, data, network = files
    code, out, err = run_cli(capsys, "--db", db, "compare", "--network", network, "--data", data, "--num", 2,
                             "--steps", 3, "--patch-size", 3, "--denoisers", "pspc-square,gaussian", "--descriptor",
                             DESCRIPTOR, "--copy-k", 2)
    assert code == 0, err
    assert "comparison 1: network tiny" in out
    assert re.search(r"network\s+1\s+network-explained", out) and re.search(r"gaussian\s+3\s+samples-only", out)
    agreement = comparisons.agreement_table(db, 1)
    assert len(agreement) == 3
    for row in agreement:
        assert f"{row['mse']:.5f}" in out
    assert "network vs pspc-square" in out and "pixel-correlation-8x8 (not SSCD)" in out
    command = json.loads(fetch(db, "SELECT command FROM runs WHERE id = 1")[0][0])
    assert command[0] == "auditor" and "compare" in command and "pspc-square,gaussian" in command
    (source,), = fetch(db, "SELECT source FROM networks")
    assert source == str(network.resolve())


def test_cli_compare_errors(files, capsys, tmp_path):
    db, data, network = files
    code, _, err = run_cli(capsys, "--db", db, "compare", "--network", tmp_path / "none.pt", "--data", data)
    assert code == 2 and "none.pt: no network file; train one with `auditor train-network`" in err
    wrong = save_network(tmp_path / "wrong.pt", tiny_unet((1, 28, 28)))
    code, _, err = run_cli(capsys, "--db", db, "compare", "--network", wrong, "--data", data,
                           "--descriptor", DESCRIPTOR)
    assert code == 2 and "28x28" in err and "8x8" in err
    code, _, err = run_cli(capsys, "--db", db, "compare", "--network", network, "--data", data, "--thresholds", "x")
    assert code == 2 and "--thresholds takes comma-separated numbers" in err
    code, _, err = run_cli(capsys, "--db", db, "compare", "--network", network, "--data", data, "--denoisers", "magic",
                           "--descriptor", DESCRIPTOR)
    assert code == 2 and "unknown denoiser" in err
    code, _, err = run_cli(capsys, "--db", db, "compare", "--network", network, "--data", data, "--schedule",
                           tmp_path / "missing.json", "--descriptor", DESCRIPTOR)
    assert code == 2 and "missing.json: no such schedule file" in err
    code, _, err = run_cli(capsys, "--db", db, "compare", "--network", network, "--data", data, "--explainer",
                           "pspc-flex", "--sensitivity-draws", 0, "--descriptor", DESCRIPTOR)
    assert code == 2 and "--sensitivity-draws must be >= 1" in err
    assert fetch(db, "SELECT count(*) FROM runs") == [(0,)]
