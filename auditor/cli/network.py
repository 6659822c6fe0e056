"""The network's commands: `train-network` (pspc.networks.training), `compare` (a network vs
PSPC from shared noise, auditor.workflows.comparison) and `audit IMAGE` (auditor.workflows.audit)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auditor.cli.common import (
    MAX_INT, PROG, CLIError, Parents, db_path, device, integer, load_data, numbers, positive, print_table,
    set_threads, share
)
from auditor.cli.copies import VERDICT_DESCRIPTOR_HELP
from auditor.store import database
from auditor.workflows.options import (
    DEFAULT_NETWORK, RECORDABLE_KINDS, AuditOptions, ComparisonOptions, ExplainOptions, Runtime
)


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def add_train_network(commands, parents: Parents) -> None:
    train = commands.add_parser(
        "train-network", parents=[parents.data], help="train the project's small EDM U-Net (CPU is enough)",
        description="Train the EDM-preconditioned U-Net (pspc.networks.unet) with the EDM loss, Adam and an EMA of the "
                    "weights. Writes --out (EMA weights), NAME.json (the training record: command, data "
                    "fingerprint, wall time, final loss, versions), NAME.png (samples, Heun, 18 steps) and "
                    "NAME.state.pt (resume state), at every checkpoint and at the end. Every draw of iteration k "
                    "is seeded by (seed, k): --resume continues exactly where the run stopped.")
    train.set_defaults(handler=cmd_train_network)
    train.add_argument("--out", type=Path, metavar="PATH.pt", help="checkpoint (default: checkpoints/DATA-unet.pt)")
    train.add_argument("--iterations", type=integer(), default=3000, help="total iterations (default: %(default)s)")
    train.add_argument("--batch", type=integer(), default=32, help="(default: %(default)s)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    train.add_argument("--seed", type=integer(high=MAX_INT), default=0, help="(default: %(default)s)")
    train.add_argument("--channels", type=integer(), metavar="C", help="model width: C, 2C, 2C per level (default: 16)")
    train.add_argument("--blocks", type=integer(), metavar="N", help="residual blocks per level (default: 1)")
    train.add_argument("--no-xflip", action="store_true", help="no random horizontal flips")
    train.add_argument("--half", action="store_true", help="store the EMA weights as float16 (half the file size)")
    train.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="M",
                       help="save every M minutes of training (default: %(default)s)")
    train.add_argument("--preview", type=integer(), default=36, metavar="N",
                       help="samples in the preview grid at each checkpoint, 0 for none (default: %(default)s)")
    train.add_argument("--resume", action="store_true", help="continue from --out's state file up to --iterations")
    train.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    train.add_argument("--threads", type=integer(), metavar="N",
                       help="CPU threads for torch (default: torch's choice; 1 is far faster on a busy machine)")
    planted = train.add_argument_group(
        "planted canaries", "a memorisation study: train on the (--limit) data plus --canary-repeats duplicates of "
                            "--canaries of its images, chosen by --canary-seed; the record's `canaries` names them")
    planted.add_argument("--canaries", type=integer(), metavar="N", help="images to duplicate (default: none)")
    planted.add_argument("--canary-repeats", type=integer(), metavar="R",
                         help="extra copies of each canary (default: 100 with --canaries)")
    planted.add_argument("--canary-seed", type=integer(high=MAX_INT), metavar="S",
                         help="seed of the canaries' choice (default: 0 with --canaries)")


def _explain_options() -> argparse.ArgumentParser:
    """The options `compare` and `audit` share (defaults: ExplainOptions, ComparisonOptions)."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--no-xflip", action="store_true", help="without the mirrored training images")
    shared.add_argument("--dataset", type=integer(high=MAX_INT), metavar="ID",
                        help="a dataset held in the store (its stored pixels, ids and metadata) instead of --data "
                             "(the report service's jobs use this)")
    shared.add_argument("--steps", type=integer(), default=ComparisonOptions.steps,
                        help="sampling steps (default: %(default)s)")
    shared.add_argument("--seed", type=integer(high=MAX_INT), default=ExplainOptions.seed,
                        help="(default: %(default)s)")
    shared.add_argument("--top-k", type=integer(), default=ExplainOptions.top_k, metavar="K",
                        help="kept weights per sample and patch (default: %(default)s)")
    shared.add_argument("--mass", type=float, default=ExplainOptions.mass, metavar="M",
                        help="stop keeping weights once they hold mass M, in (0, 1] (default: %(default)s)")
    shared.add_argument("--explainer", choices=RECORDABLE_KINDS, default=ExplainOptions.explainer,
                        help="the PSPC denoiser whose posterior weights attribute the network's states "
                             "(default: %(default)s)")
    shared.add_argument("--patch-size", type=integer(), metavar="S",
                        help="pspc-square: fixed s x s patches (default: the paper's s(t) schedule)")
    shared.add_argument("--schedule", type=Path, metavar="FILE",
                        help="a tuned schedule file (bench/fidelity.py --tune): s(t) for pspc-square, lambda(t) for "
                             "pspc-flex (default: the paper's schedules)")
    shared.add_argument("--sensitivity-draws", type=integer(), default=ExplainOptions.sensitivity_draws, metavar="N",
                        help="pspc-flex with a network: forward-process draws per noise level for the network's "
                             "gradient sensitivity (Eq. 8) its masks come from (default: %(default)s)")
    shared.add_argument("--descriptor", metavar="SPEC",
                        help="copy-detection descriptor: sscd, sscd:PATH, an official SSCD name, "
                             "pixel-correlation[:N], fmnist-copy (the committed learned descriptor) or learned:PATH "
                             "(default: $PSPC_SSCD_CHECKPOINT when set, else pixel-correlation, which is not SSCD)")
    shared.add_argument("--verdict-descriptor", metavar="SPEC", help=VERDICT_DESCRIPTOR_HELP)
    shared.add_argument("--thresholds", default=",".join(f"{t:g}" for t in ComparisonOptions.thresholds),
                        metavar="T1,T2", help="copy thresholds on the descriptor similarity (default: %(default)s)")
    shared.add_argument("--copy-k", type=integer(), default=ComparisonOptions.copy_k, metavar="K",
                        help="nearest training images stored per image, 0 to skip copy detection "
                             "(default: %(default)s)")
    shared.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    shared.add_argument("--threads", type=integer(), metavar="N",
                        help="CPU threads of torch and of the PSPC kernels (default: all cores; 1 is far faster on a "
                             "busy machine)")
    return shared


def add_compare_and_audit(commands, parents: Parents) -> None:
    """`auditor compare` and `auditor audit IMAGE`."""
    from auditor.cli import distributed

    shared = _explain_options()
    compare = commands.add_parser(
        "compare", parents=[parents.store, parents.data, shared],
        help="network vs PSPC from shared noise, network samples explained",
        description="Sample with a network and with PSPC (and --denoisers) from the same initial noise. At every "
                    "network step PSPC's posterior on the network's own z_t is recorded as the network sample's "
                    "attribution, with the network-vs-PSPC MSE at that step as its confidence. Then the "
                    "descriptor similarity of every pair of samples from the same noise and the nearest training "
                    "images of every sample are stored. Prints the run ids and the per-step agreement table.")
    compare.set_defaults(handler=cmd_compare)
    compare.add_argument("--network", type=Path, default=Path(DEFAULT_NETWORK), metavar="PATH",
                         help="project checkpoint, TorchScript net(z, sigma) or EDM .pkl (default: %(default)s)")
    compare.add_argument("--num", type=integer(), default=ComparisonOptions.num_samples, metavar="N",
                         help="samples (default: %(default)s); under torchrun, whose own options take --num, "
                              "write --num-samples")
    compare.add_argument("--num-samples", dest="num", type=integer(), metavar="N", help=argparse.SUPPRESS)
    compare.add_argument("--sampler", choices=("euler", "heun"), default=ComparisonOptions.sampler,
                         help="(default: %(default)s)")
    compare.add_argument("--denoisers", default=",".join(ComparisonOptions.denoisers), metavar="KINDS",
                         help="comma-separated denoisers sampled from the same noise: pspc-square, pspc-flex, "
                              "empirical (recorded with attribution), gaussian, cfdm (final images only) "
                              "(default: %(default)s)")

    audit = commands.add_parser(
        "audit", parents=[parents.store, parents.data, shared], help="attribute an external image to training images",
        description="With a network: invert the image along the network's deterministic PF-ODE (t_min up to "
                    "t_max), replay it forward and record PSPC's attribution at every step, with the "
                    "network-vs-PSPC agreement and the reconstruction error. With --no-network: PSPC's "
                    "attribution of x + t eps at --noise-levels. The image must have the training set's size and "
                    "channels. The nearest training images by descriptor are stored too.")
    audit.set_defaults(handler=cmd_audit)
    audit.add_argument("image", type=Path, metavar="IMAGE", help="a PNG/JPEG/BMP/WebP image or a .npy array")
    way = audit.add_mutually_exclusive_group()
    way.add_argument("--network", type=Path, default=Path(DEFAULT_NETWORK), metavar="PATH",
                     help="invert and replay with this network (default: %(default)s)")
    way.add_argument("--no-network", action="store_true",
                     help="attribute the image's patches directly at --noise-levels, without a network")
    audit.add_argument("--sampler", choices=("euler", "heun"), default=AuditOptions.sampler,
                       help="inversion and replay integrator (default: %(default)s, second order)")
    audit.add_argument("--noise-levels", default=",".join(f"{t:g}" for t in AuditOptions.noise_levels),
                       metavar="T1,T2,...", help="--no-network: noise levels t of x + t eps (default: %(default)s)")
    audit.add_argument("--draws", type=integer(), default=AuditOptions.draws, metavar="N",
                       help="--no-network: noise draws per level, one sample each (default: %(default)s)")
    for command in (compare, audit):  # over torchrun's ranks
        distributed.add_distributed_options(command)


# ---------------------------------------------------------------------------------------
# train-network
# ---------------------------------------------------------------------------------------
def _canaries(args):
    """The planted canaries asked for (pspc.networks.training.Canaries), or None."""
    from pspc.networks.training import Canaries

    if args.canaries is None:
        if args.canary_repeats is not None or args.canary_seed is not None:
            raise CLIError("--canary-repeats and --canary-seed need --canaries N")
        return None
    positive(args.canaries, "--canaries")
    positive(args.canary_repeats, "--canary-repeats")
    return Canaries(args.canaries, 100 if args.canary_repeats is None else args.canary_repeats,
                    args.canary_seed or 0)


def cmd_train_network(args, argv: list[str]) -> int:
    from tqdm import tqdm

    from pspc.networks import NetworkConfig
    from pspc.networks.training import TrainingConfig, train

    for option in ("iterations", "batch", "lr", "channels", "blocks", "threads"):
        positive(getattr(args, option), f"--{option}")
    canaries = _canaries(args)
    if args.checkpoint_minutes < 0 or args.preview < 0:
        raise CLIError("--checkpoint-minutes and --preview must be >= 0")
    torch_device = device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data = load_data(args.data, args)
    out = args.out or Path("checkpoints") / f"{data.name}{'' if canaries is None else '-canary'}-unet.pt"
    network = None
    if not args.resume or args.channels or args.blocks:
        network = NetworkConfig(image_channels=data.channels, resolution=data.resolution,
                                model_channels=args.channels or 16, num_blocks=args.blocks or 1)
    config = TrainingConfig(iterations=args.iterations, batch_size=args.batch, lr=args.lr, seed=args.seed,
                            xflip=not args.no_xflip, checkpoint_seconds=60 * args.checkpoint_minutes,
                            preview_samples=args.preview)
    with tqdm(total=args.iterations, desc="training", unit="it", file=sys.stderr, disable=None) as bar:
        def progress(done: int, total: int, loss: float) -> None:
            bar.n = done
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(0)
            if bar.disable and done % 100 == 0:  # not a terminal (a log file): one line per 100 iterations
                print(f"iteration {done}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

        try:
            record = train(data, out, network, config, resume=args.resume, device=torch_device, half=args.half,
                           command=[PROG, *argv], progress=progress, log=bar.write, canaries=canaries)
        except KeyboardInterrupt:
            bar.write(f"interrupted: the last checkpoint is kept; continue with `{PROG} train-network --resume "
                      f"--out {out} ...` (same options)")
            raise
    print(f"trained {record['iterations']} iterations ({record['epochs']} epochs) in {record['wall_seconds']:.0f} s: "
          f"final loss {record['final_loss']}, eval loss {record['eval_loss']}")
    if canaries is not None:
        planted = record["canaries"]
        print(f"planted canaries: training-set indices {', '.join(map(str, planted['indices']))}, each "
              f"{1 + planted['repeats']} times in {record['dataset']['count']} images")
    for path in (out, out.with_suffix(".json"), out.with_suffix(".png"), Path(record["checkpoint"]["state"])):
        if path.exists():
            print(f"  {path}")
    return 0


# ---------------------------------------------------------------------------------------
# compare and audit
# ---------------------------------------------------------------------------------------
def _check_explain_args(args) -> list[float]:
    """The checks `compare` and `audit` share; returns the thresholds."""
    for option in ("steps", "top_k", "patch_size", "threads"):
        positive(getattr(args, option), f"--{option.replace('_', '-')}")
    set_threads(args.threads)
    if not 0 < args.mass <= 1:
        raise CLIError(f"--mass must be in (0, 1], got {args.mass}")
    if args.copy_k < 0:
        raise CLIError(f"--copy-k must be >= 0, got {args.copy_k}")
    if args.patch_size is not None and args.explainer != "pspc-square":
        raise CLIError(f"--patch-size applies to --explainer pspc-square, not {args.explainer}")
    if args.sensitivity_draws < 1:
        raise CLIError(f"--sensitivity-draws must be >= 1, got {args.sensitivity_draws}")
    return numbers(args.thresholds, "--thresholds")


def _descriptor(spec, torch_device):
    """The copy-detection descriptor, its fallback warning printed as a note."""
    import warnings

    from auditor.similarity.descriptors import FallbackDescriptorWarning, load_descriptor

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FallbackDescriptorWarning)
        descriptor = load_descriptor(spec, device=torch_device)
    for warning in caught:
        print(f"{PROG}: note: {warning.message}", file=sys.stderr)
    return descriptor


def _setup(args, network_path: Path | None, what: str, check_data=None):
    """Shared checks and loading of compare / audit, cheapest first: (store path, training set,
    device, network, descriptor, thresholds). check_data(training set) runs before the network
    is loaded."""
    thresholds = _check_explain_args(args)
    path = db_path(args)
    database.require_current(path, timeout=args.lock_timeout)
    torch_device = device(args.device)
    if network_path is not None and not network_path.is_file():
        hint = " or --no-network to attribute the image directly" if what == "audit" else ""
        raise CLIError(f"{network_path}: no network file; train one with `auditor train-network`, or pass "
                       f"--network PATH{hint}")
    if args.dataset is None:
        data = load_data(args.data, args).with_xflip(not args.no_xflip)
    elif args.data != "fashion-mnist" or args.limit is not None:
        raise CLIError("--dataset takes the training images from the store; drop --data and --limit")
    else:
        from auditor.store.datasets import stored_training_set

        data = stored_training_set(path, args.dataset, timeout=args.lock_timeout).with_xflip(not args.no_xflip)
    if check_data is not None:
        check_data(data)
    network = None
    if network_path is not None:
        from pspc.networks import load_network

        network = load_network(network_path, data, device=torch_device)
    descriptor = _descriptor(args.descriptor, torch_device) if args.copy_k or what == "compare" else None
    return path, data, torch_device, network, descriptor, thresholds


def _explain_settings(args) -> dict:
    return {"seed": args.seed, "top_k": args.top_k, "mass": args.mass, "explainer": args.explainer,
            "patch_size": args.patch_size, "schedule": args.schedule, "sensitivity_draws": args.sensitivity_draws,
            "copy_k": args.copy_k, "verdict_descriptor": args.verdict_descriptor or "configured"}


def _print_agreement(rows: list[dict]) -> None:
    print_table(["step", "t", "MSE net vs PSPC", "max MSE", "max |error|", "captured mass"],
                [[r["step"], f"{r['t']:.4g}", f"{r['mse']:.5f}", f"{r['max_mse']:.5f}", f"{r['max_abs_error']:.4f}",
                  "" if r["mass"] is None else f"{r['mass']:.3f}"] for r in rows])


def _print_copies(path, run_ids: dict, timeout: float) -> None:
    """The nearest training image of every stored image, by descriptor (a similarity, not a verdict:
    its thresholds are not calibrated, so no flag is shown)."""
    from auditor.store.comparisons import nearest_copies

    rows = nearest_copies(path, list(run_ids.values()), timeout=timeout)
    if not rows:
        return
    role = {v: k for k, v in run_ids.items()}
    print(f"nearest training image by descriptor {rows[0][6]} (similarity only; the copy verdict is calibrated "
          f"separately):")
    print_table(["run", "role", "sample", "training image", "mirrored", "score"],
                [[r, role[r], s, image, "yes" if flip else "", f"{score:.4f}"]
                 for r, s, image, flip, score, _, _ in rows])


def _print_verdicts(verdicts: dict, run_ids: dict) -> None:
    """One line per verdict: run, role, sample, verdict and its sentence."""
    role = {v: k for k, v in run_ids.items()}
    print("copy verdict (calibrated thresholds; `auditor calibrate` stores them):")
    print_table(["run", "role", "sample", "verdict", "why"],
                [[run_id, role.get(run_id, ""), i, v.verdict, v.sentence]
                 for run_id, by_sample in verdicts.items() for i, v in sorted(by_sample.items())])


def _print_similarity(matrix) -> None:
    print(f"similarity of samples from the same noise (descriptor {matrix.descriptor['name']}, preprocessing "
          f"{matrix.descriptor['preprocessing']['name']}; thresholds "
          f"{', '.join(f'{t:g}' for t in matrix.thresholds)}):")
    names = matrix.names
    print_table(["pair", "mean", "std", *[f">= {t:g}" for t in matrix.thresholds]],
                [[f"{names[i]} vs {names[j]}", f"{matrix.mean[i, j]:.4f}", f"{matrix.std[i, j]:.4f}",
                  *[f"{matrix.fraction_above(t)[i, j]:.0%}" for t in matrix.thresholds]]
                 for i in range(len(names)) for j in range(i + 1, len(names))])


def cmd_compare(args, argv: list[str], distribute=None) -> int:
    from tqdm import tqdm

    from auditor.cli import distributed
    from auditor.workflows import comparison

    if distribute is None and distributed.wanted(args):  # over torchrun's ranks: auditor.cli.distributed
        return distributed.lead_ranks(args, "compare", lambda leader: cmd_compare(args, argv, leader))
    positive(args.num, "--num")
    kinds = [k.strip() for k in args.denoisers.split(",") if k.strip()]
    if not kinds:
        raise CLIError("--denoisers needs at least one denoiser")
    path, data, torch_device, network, descriptor, thresholds = _setup(args, args.network, "compare")
    options = ComparisonOptions(**_explain_settings(args), num_samples=args.num, steps=args.steps,
                                sampler=args.sampler, denoisers=tuple(kinds), descriptor=descriptor,
                                thresholds=tuple(thresholds))
    with tqdm(total=args.steps * (1 + len(kinds)), desc="comparing", unit="step", file=sys.stderr,
              disable=None) as bar:
        result = comparison.record_comparison(
            path, data, network, options=options, distribute=distribute,
            runtime=Runtime(command=[PROG, *argv], progress=bar.update, device=torch_device, timeout=args.lock_timeout))
    print(f"comparison {result.comparison_id}: network {network.name} (network {result.network_id}) vs "
          f"{', '.join(kinds)}; {args.num} samples x {args.steps} {args.sampler} steps from shared noise "
          f"(seed {args.seed}) in {path}")
    kinds_of = {comparison.NETWORK_ROLE: "network-explained", **{k: "pspc" for k in RECORDABLE_KINDS}}
    print_table(["role", "run", "kind"], [[role, run_id, kinds_of.get(role, "samples-only")]
                                          for role, run_id in result.run_ids.items()])
    print(f"per-step agreement of run {result.network_run_id}: PSPC ({args.explainer}) on the network's z_t vs the "
          f"network's D(z_t), mean over samples:")
    _print_agreement(result.agreement)
    _print_similarity(result.similarity)
    _print_copies(path, result.run_ids, args.lock_timeout)
    _print_verdicts(result.verdicts, result.run_ids)
    print(f"see the network sample's sources with `auditor show {result.network_run_id}/0`")
    return 0


def _print_audit_method(result, network, seed: int) -> None:
    details = result.details
    if result.method == "inversion":
        inv, rec = details["inversion"], details["reconstruction"]
        print(f"method: inversion with network {network.name}: PF-ODE inverted from t = {inv['from_t']:g} to "
              f"{inv['to_t']:g} ({inv['steps']} {inv['sampler']} steps; inverted noise std {inv['latent_std']:.3f} "
              f"x t_max), replayed with attribution")
        print(f"reconstruction: MSE {rec['mse']:.3g}, max |error| {rec['max_abs_error']:.3g} (replay end point vs "
              f"the image)")
        _print_agreement(result.agreement)
    else:
        print(f"method: direct (no network): PSPC attribution of x + t eps at t = "
              f"{', '.join(f'{t:g}' for t in details['noise_levels'])} ({details['draws']} draw(s), seed {seed})")


def cmd_audit(args, argv: list[str], distribute=None) -> int:
    from tqdm import tqdm

    from auditor.cli import distributed
    from auditor.store.attribution import sample_sources
    from auditor.workflows import audit

    if distribute is None and distributed.wanted(args):  # over torchrun's ranks: auditor.cli.distributed
        return distributed.lead_ranks(args, "audit", lambda leader: cmd_audit(args, argv, leader))

    levels = numbers(args.noise_levels, "--noise-levels")
    positive(args.draws, "--draws")
    network_path = None if args.no_network else args.network
    if network_path is not None and args.steps < 2:
        raise CLIError(f"--steps must be >= 2 to invert the PF-ODE, got {args.steps}")
    if not args.image.exists():
        raise CLIError(f"{args.image}: no such file")
    path, data, torch_device, network, descriptor, thresholds = _setup(
        args, network_path, "audit", check_data=lambda data: audit.load_audit_image(args.image, data.image_shape))
    options = AuditOptions(**_explain_settings(args), steps=args.steps, sampler=args.sampler,
                           noise_levels=tuple(levels), draws=args.draws, descriptor=descriptor,
                           thresholds=tuple(thresholds))
    with tqdm(total=(2 * args.steps - 1) if network is not None else len(levels), desc="auditing", unit="step",
              file=sys.stderr, disable=None) as bar:
        result = audit.record_audit(
            path, data, args.image, network=network, options=options, distribute=distribute,
            runtime=Runtime(command=[PROG, *argv], progress=bar.update, device=torch_device, timeout=args.lock_timeout))
    print(f"run {result.run_id}: audit of {args.image} (sha256 {result.details['input'].get('sha256', '')[:12]}) "
          f"in {path}")
    print(f"verdict: {result.verdict.sentence}")
    _print_audit_method(result, network, args.seed)
    rows = sample_sources(path, result.run_id, 0, top=5, timeout=args.lock_timeout)
    print("top training sources (last step, sample 0):")
    print_table(["share", "mirrored", "index", "image id", "label", "owner", "license"],
                [[share(r.get("share")), share(r.get("flip_share")), r.get("image_index"), r.get("image_id"),
                  r.get("label_name") or r.get("label"), r.get("owner"), r.get("license")] for r in rows])
    _print_copies(path, {"audited image": result.run_id}, args.lock_timeout)
    print(f"see every step with `auditor show {result.run_id}/0 --step N`")
    return 0
