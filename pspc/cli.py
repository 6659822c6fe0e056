"""The `pspc` command line: a thin layer over the library.

  pspc info     describe a training set and the default patch schedule
  pspc denoise  run a denoiser once on noised training images or on a given z (.npy)
  pspc sample   draw samples with the PF-ODE sampler

Every run writes its arrays, a PNG grid and run.json (the reproducibility record: argv,
the denoiser's description with the data fingerprint, seed, versions, device, timing) to
--out. Bad input (data, parameters, files) ends with `pspc: error: ...` and exit status 2,
without a traceback (set PSPC_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pspc.data.images import save_grid
from pspc.data.arrays import load_npy
from pspc.data.image_folder import RESIZE_POLICIES
from pspc.data.loaders import folder_options, load_training_set
from pspc.data.training_set import TrainingSet
from pspc.denoisers import DENOISER_KINDS, PSPCDenoiser, build_denoiser
from pspc.errors import InputError
from pspc.posterior.weights import WeightRequest
from pspc.record import environment, file_sha256
from pspc.samplers import SamplerConfig, initial_noise, sample
from pspc.schedules import check_noise_levels, default_patch_schedule, edm_time_steps

PROG = "pspc"
EXIT_USAGE = 2


class CLIError(InputError):
    """A problem with the user's request; printed as `pspc: error: ...`."""


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def _data_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("training data")
    group.add_argument("--data", default="fashion-mnist", metavar="SPEC",
                       help="training set: fashion-mnist[:train|:test], a .npy/.npz/.zip/IDX file, "
                            "a CIFAR-10 batch directory or an image folder (default: %(default)s)")
    group.add_argument("--limit", type=int, metavar="N", help="keep only the first N training images (default: all)")
    group.add_argument("--resize", choices=RESIZE_POLICIES,
                       help="image folders: error on mixed sizes (default), or resize, center-crop or pad to --size")
    group.add_argument("--size", metavar="H[xW]", help="image folders: the target size for --resize")
    return parent


def _run_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("denoiser and run")
    group.add_argument("--xflip", action=argparse.BooleanOptionalAction, default=True,
                       help="add mirrored copies of the training images, as in the paper (default: on)")
    group.add_argument("--denoiser", choices=DENOISER_KINDS, default="pspc-square", help="(default: %(default)s)")
    group.add_argument("--patch-size", type=int, metavar="S",
                       help="pspc-square: fixed s x s patches (default: the paper's s(t) schedule)")
    group.add_argument("--rank", type=int, metavar="R", help="gaussian: keep the top R eigenpairs (default: all)")
    group.add_argument("--schedule", type=Path, metavar="FILE",
                       help="pspc-square / pspc-flex: s(t) or lambda(t) from a schedule file (bench/fidelity.py --tune)")
    group.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    group.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: out/<command>-<timestamp>)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The `pspc` argument parser: info, denoise and sample, with shared data and run options."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Training-free PSPC diffusion denoisers: denoise, sample, inspect data.",
        epilog="Run `pspc COMMAND --help` for a command's options. PSPC_DEBUG=1 shows tracebacks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data, run = _data_options(), _run_options()

    commands.add_parser("info", parents=[data], help="describe a training set and the default patch schedule",
                        description="Print a training set's name, source, size, fingerprint and the default "
                                    "PSPC-Square patch schedule s(t) over the 18 EDM steps.")

    denoise = commands.add_parser(
        "denoise", parents=[data, run], help="denoise noised training images or a given z",
        description="Run the denoiser once at noise level t, on training images noised with the forward "
                    "process z = x + t eps (seeded), or on z read from --input.")
    denoise.add_argument("--t", type=float, required=True, help="noise level t > 0 (EDM sigma)")
    source = denoise.add_mutually_exclusive_group()
    source.add_argument("--num", type=int, metavar="B", help="noise B training images picked from the seed (default: 8)")
    source.add_argument("--input", type=Path, metavar="Z.npy", help="float array [B, C, H, W] to denoise")
    denoise.add_argument("--weights", type=int, metavar="K",
                         help="also save the top-K posterior weights per (image, patch) to weights.npz (PSPC denoisers)")
    denoise.add_argument("--weight-mass", type=float, default=1.0, metavar="M",
                         help="with --weights: stop keeping entries once they hold mass M (default: %(default)s, keep K)")

    sampler = commands.add_parser(
        "sample", parents=[data, run], help="draw samples with the probability-flow ODE",
        description="Sample with the EDM schedule; sample i starts from the noise seeded with seed + i.")
    sampler.add_argument("--num", type=int, default=16, metavar="N", help="number of samples (default: %(default)s)")
    sampler.add_argument("--steps", type=int, default=18, help="sampling steps (default: %(default)s)")
    sampler.add_argument("--sampler", choices=("euler", "heun"), default="euler", help="(default: %(default)s)")
    return parser


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------
def _positive(value: int | float | None, option: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise CLIError(f"{option} must be > 0, got {value}")


def resolve_device(name: str) -> torch.device:
    """The torch device named by a --device option (cpu or cuda[:N]), checked to exist here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device {name!r} is not a device name; use cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name} requested, but CUDA is not available (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise CLIError(f"--device {name}: only cpu and cuda are supported")
    return device


def _load_data(args) -> TrainingSet:
    _positive(args.limit, "--limit")
    return load_training_set(args.data, limit=args.limit, **folder_options(args.resize, args.size))


def _make_denoiser(args, data: TrainingSet, device: torch.device):
    if args.patch_size is not None and args.denoiser != "pspc-square":
        raise CLIError(f"--patch-size applies to --denoiser pspc-square, not {args.denoiser}")
    if args.rank is not None and args.denoiser != "gaussian":
        raise CLIError(f"--rank applies to --denoiser gaussian, not {args.denoiser}")
    _positive(args.patch_size, "--patch-size")
    _positive(args.rank, "--rank")
    denoiser = build_denoiser(args.denoiser, data.with_xflip(args.xflip), patch_size=args.patch_size,
                              rank=args.rank, seed=args.seed, schedule=args.schedule)
    return denoiser.to(device)


def _out_dir(args) -> Path:
    """--out, or a fresh out/<command>-<timestamp>[-n]; created if missing."""
    out = args.out
    if out is None:
        base = Path("out") / f"{args.command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        out, n = base, 1
        while out.exists():
            out, n = base.with_name(f"{base.name}-{n}"), n + 1
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--out {out}: cannot create the directory ({exc.strerror or exc})") from None
    return out


def _environment(device: torch.device) -> dict:
    return environment(device, packages=("numba", "pillow", "tqdm"))


def _write_record(out: Path, argv: list[str], args, record: dict, device: torch.device, started: float) -> Path:
    """run.json: what was run, on which data, with what, where, and how long it took."""
    full = {
        "command": args.command,
        "argv": [PROG, *argv],
        "cwd": os.getcwd(),
        **record,
        "seed": args.seed,
        **_environment(device),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = out / "run.json"
    path.write_text(json.dumps(full, indent=2, default=str) + "\n")
    return path


def _report(out: Path, files: list[Path]) -> None:
    print(f"wrote {len(files)} files to {out}/:")
    for path in files:
        print(f"  {path}")


# ---------------------------------------------------------------------------------------
# pspc info
# ---------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    """`pspc info`: the training set and its default s(t) over the 18 EDM steps."""
    data = _load_data(args)
    c, h, w = data.image_shape
    print(f"name         {data.name}")
    print(f"source       {data.source}")
    print(f"count        {len(data)} images ({2 * len(data)} entries with x-flip)")
    print(f"shape        {c} x {h} x {w} (C x H x W)")
    print(f"fingerprint  {data.fingerprint}")
    schedule = default_patch_schedule(h, w)
    times = edm_time_steps(18)[:-1].tolist()
    print(f"default pspc-square patch schedule ({schedule.name}) over the 18 EDM steps:")
    print("  step         t    s")
    for step, t in enumerate(times):
        print(f"  {step:4d}  {t:8.4f}  {schedule(t):3d}")
    return 0


# ---------------------------------------------------------------------------------------
# pspc denoise
# ---------------------------------------------------------------------------------------
def _read_input(path: Path, image_shape: tuple[int, int, int]) -> np.ndarray:
    """A float array [B, C, H, W] matching the training images, from a .npy file."""
    if not path.is_file():
        raise CLIError(f"--input {path}: no such file")
    try:
        z = load_npy(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem to fix
        raise CLIError(f"--input {path}: not a readable .npy array ({exc})") from None
    if not np.issubdtype(z.dtype, np.floating):
        raise CLIError(f"--input {path}: expected a float array (data units, x in [-1, 1] plus noise), got {z.dtype}")
    c, h, w = image_shape
    if z.ndim != 4 or z.shape[0] == 0 or tuple(z.shape[1:]) != tuple(image_shape):
        raise CLIError(f"--input {path}: shape {tuple(z.shape)} does not match the training images; "
                       f"expected [B, {c}, {h}, {w}] (B >= 1, {c} channel(s) at {h}x{w})")
    if not np.isfinite(z).all():
        raise CLIError(f"--input {path}: contains NaN or infinite values")
    return z.astype(np.float64 if z.dtype == np.float64 else np.float32)


def _forward_process(data: TrainingSet, num: int, t: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(x, z = x + t eps, picked indices): `num` distinct training images chosen by the seed."""
    if num > len(data):
        raise CLIError(f"--num {num} exceeds the {len(data)} training images")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(data), generator=generator)[:num].tolist()
    x = data.as_float()[picks]
    z = x + t * torch.randn(x.shape, generator=generator)
    return x, z, picks


def _weights_arrays(data: TrainingSet, weights) -> dict[str, np.ndarray]:
    """The arrays of weights.npz (one noise level, hence one patch set and one group)."""
    if len(weights) != 1:
        raise RuntimeError(f"expected the weights of one patch set, got {len(weights)}")
    [(index, w)] = weights
    order = torch.argsort(index)  # rows back in batch order
    entry = w.entry[order]
    image_index = torch.where(entry >= 0, entry % w.num_images, -1)
    ids = np.array([[[data.ids[i] if i >= 0 else "" for i in row] for row in sample] for sample in image_index.tolist()])
    return {
        "entry": entry.numpy(), "weight": w.weight[order].numpy(), "mass": w.mass[order].numpy(),
        "entropy": w.entropy[order].numpy(), "ess": w.ess[order].numpy(),
        "image_index": image_index.numpy(), "flip": (entry >= w.num_images).numpy(), "image_id": ids,
        "t": w.t[order].numpy(), "num_images": np.array(w.num_images),
    }


def cmd_denoise(args, argv, started: float) -> int:
    """`pspc denoise`: D(z, t) once (on noised training images or a given z), optionally with
    the posterior weights; writes the arrays, a grid and run.json."""
    _positive(args.t, "--t")
    check_noise_levels([args.t], CLIError)  # the engine's range, before anything is written
    _positive(args.num, "--num")
    _positive(args.weights, "--weights")
    if not 0 < args.weight_mass <= 1:
        raise CLIError(f"--weight-mass must be in (0, 1], got {args.weight_mass}")
    if args.weights is not None and args.denoiser not in ("pspc-square", "pspc-flex", "empirical"):
        raise CLIError(f"--weights needs a PSPC denoiser (pspc-square, pspc-flex, empirical), not {args.denoiser}")
    device = resolve_device(args.device)
    data = _load_data(args)
    if args.input is not None:
        clean, picks = None, None
        z = torch.from_numpy(_read_input(args.input, data.image_shape))
    else:
        clean, z, picks = _forward_process(data, args.num or 8, args.t, args.seed)
    denoiser = _make_denoiser(args, data, device)
    out = _out_dir(args)

    begin = time.perf_counter()
    weights = None
    with torch.no_grad():
        if args.weights is not None and isinstance(denoiser, PSPCDenoiser):
            request = WeightRequest(top_k=args.weights, mass=args.weight_mass)
            denoised, weights = denoiser.posterior(z.to(device), args.t, request)
        else:
            denoised = denoiser(z.to(device), args.t)
    seconds = time.perf_counter() - begin
    denoised = denoised.cpu()

    files = [out / "z.npy", out / "denoised.npy"]
    np.save(files[0], z.numpy())
    np.save(files[1], denoised.numpy())
    rows = [z, denoised]
    if clean is not None:
        files.append(out / "clean.npy")
        np.save(files[-1], clean.numpy())
        rows.insert(0, clean)
    if weights is not None:
        files.append(out / "weights.npz")
        np.savez_compressed(files[-1], **_weights_arrays(data, weights))
    files.append(Path(save_grid(torch.cat([r.float() for r in rows]), out / "grid.png", columns=z.shape[0])))

    if args.input is not None:
        inputs = {"input": str(args.input.resolve()), "input_sha256": file_sha256(args.input)}
    else:
        inputs = {"forward_process": "z = x + t * eps", "picked_indices": picks,
                  "picked_ids": [data.ids[i] for i in picks]}
    record = {
        "denoiser": denoiser.describe(),
        "t": args.t,
        "batch": z.shape[0],
        **inputs,
        "weights": {"top_k": args.weights, "mass": args.weight_mass} if args.weights is not None else None,
        "grid_rows": ["clean", "z", "denoised"] if clean is not None else ["z", "denoised"],
        "denoise_seconds": round(seconds, 3),
        "outputs": [p.name for p in files],
    }
    files.append(_write_record(out, argv, args, record, device, started))
    _report(out, files)
    return 0


# ---------------------------------------------------------------------------------------
# pspc sample
# ---------------------------------------------------------------------------------------
def cmd_sample(args, argv, started: float) -> int:
    """`pspc sample`: PF-ODE samples from `initial_noise` (sample i seeded with seed + i);
    writes samples.npy, samples.png and run.json."""
    _positive(args.num, "--num")
    _positive(args.steps, "--steps")
    config = SamplerConfig(method=args.sampler, num_steps=args.steps)
    device = resolve_device(args.device)
    data = _load_data(args)
    denoiser = _make_denoiser(args, data, device)
    out = _out_dir(args)

    begin = time.perf_counter()
    z = initial_noise(args.num, data.image_shape, args.seed, config.t_max, device)
    with torch.no_grad(), tqdm(total=config.num_steps, desc="sampling", unit="step", file=sys.stderr,
                               disable=None) as bar:
        raw = sample(denoiser, z, config, progress=bar.update).cpu()
    seconds = time.perf_counter() - begin
    samples = raw.clamp(-1, 1).float()

    files = [out / "samples.npy"]
    np.save(files[0], samples.numpy())
    files.append(Path(save_grid(samples, out / "samples.png")))
    record = {
        "denoiser": denoiser.describe(),
        "sampler": asdict(config),
        "time_steps": config.time_steps().tolist(),
        "num": args.num,
        "sample_seeds": [args.seed, args.seed + args.num - 1],
        "raw_range": [float(raw.min()), float(raw.max())],
        "saved_as": "float32, clipped to [-1, 1]",
        "sample_seconds": round(seconds, 3),
        "outputs": [p.name for p in files],
    }
    files.append(_write_record(out, argv, args, record, device, started))
    _report(out, files)
    return 0


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 2 bad input or usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage / help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "info":
            return cmd_info(args)
        if args.command == "denoise":
            return cmd_denoise(args, argv, started)
        return cmd_sample(args, argv, started)
    except (ValueError, OSError) as exc:  # pspc.errors.InputError (TrainingSetError, CLIError, ...) is a ValueError
        if os.environ.get("PSPC_DEBUG"):
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130



if __name__ == "__main__":
    sys.exit(main())
