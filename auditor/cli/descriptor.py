"""`auditor train-descriptor`: train the learned copy descriptor (auditor.similarity.descriptor_training)
on a training set's images and write the checkpoint with its JSON record."""

from __future__ import annotations

import sys
from pathlib import Path

from auditor.cli.common import MAX_INT, PROG, CLIError, Parents, integer, load_data, positive, set_threads

DEFAULT_OUT = Path("checkpoints/fmnist-copy-descriptor.pt")  # = learned_descriptor.DEFAULT_CHECKPOINT
# TrainingOptions' defaults (a test checks they agree), kept here so that building the parser imports no torch
DEFAULTS = {"steps": 500, "batch": 256, "group": 16, "lr": 3e-3, "temperature": 0.05, "entropy_weight": 0.0,
            "dimension": 64, "seed": 0}


def add_train_descriptor(commands, parents: Parents) -> None:
    train = commands.add_parser(
        "train-descriptor", parents=[parents.data],
        help="train the small learned copy descriptor, SSCD-style (CPU, minutes)",
        description="Train a small CNN copy descriptor (4 conv layers, GeM pooling, L2-normalised output) on the "
                    "training images only: two views of each image by chains of the copy-detection benchmark's "
                    "near-copy transforms (noise, brightness, contrast, 1-2 px shifts, crop-and-resize, JPEG, blur), "
                    "batches of look-alike images (hard negatives), InfoNCE as SSCD (optionally with its entropy "
                    "regulariser). Horizontal flips are matched through the mirrored entries, not learned. Writes "
                    "--out (plain tensors) and NAME.json (seed, data fingerprint, options, loss curve, versions, "
                    "time, the checkpoint's sha256). Seeded: the same options and thread count give the same "
                    "weights. Use it with --descriptor learned:PATH (or fmnist-copy for the committed one) and "
                    "calibrate it with `auditor calibrate`.")
    train.set_defaults(handler=cmd_train_descriptor)
    train.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="PATH.pt", help="(default: %(default)s)")
    train.add_argument("--steps", type=integer(low=1), default=DEFAULTS["steps"], help="(default: %(default)s)")
    train.add_argument("--batch", type=integer(low=2), default=DEFAULTS["batch"], metavar="B",
                       help="images per step, two views each (default: %(default)s)")
    train.add_argument("--group", type=integer(low=1), default=DEFAULTS["group"], metavar="G",
                       help="look-alike group size: each batch is B/G images with their G-1 nearest neighbours "
                            "(default: %(default)s)")
    train.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate (default: %(default)s)")
    train.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], help="(default: %(default)s)")
    train.add_argument("--entropy-weight", type=float, default=DEFAULTS["entropy_weight"], metavar="W",
                       help="weight of SSCD's entropy regulariser (default: %(default)s)")
    train.add_argument("--dimension", type=integer(low=2), default=DEFAULTS["dimension"], metavar="D",
                       help="descriptor dimension (default: %(default)s)")
    train.add_argument("--seed", type=integer(high=MAX_INT), default=DEFAULTS["seed"], help="(default: %(default)s)")
    train.add_argument("--threads", type=integer(low=1), metavar="N",
                       help="CPU threads for torch (default: torch's choice; 1 is far faster on a busy machine)")


def cmd_train_descriptor(args, argv: list[str]) -> int:
    from dataclasses import replace

    from auditor.similarity.descriptor_training import TrainingOptions, save_descriptor, train_descriptor

    for option in ("lr", "temperature"):
        positive(getattr(args, option), f"--{option}")
    if args.entropy_weight < 0:
        raise CLIError(f"--entropy-weight must be >= 0, got {args.entropy_weight}")
    set_threads(args.threads)
    data = load_data(args.data, args)
    defaults = TrainingOptions()
    options = TrainingOptions(steps=args.steps, batch=args.batch, group=args.group, lr=args.lr,
                              temperature=args.temperature, entropy_weight=args.entropy_weight, seed=args.seed,
                              network=replace(defaults.network, dimension=args.dimension,
                                              image_size=tuple(data.resolution)))

    def progress(step: int, steps: int, loss: float) -> None:
        print(f"step {step}/{steps} loss {loss:.4f}", file=sys.stderr, flush=True)

    print(f"training a copy descriptor on {data.name} ({len(data)} images) for {options.steps} steps ...",
          file=sys.stderr)
    result = train_descriptor(data.images, options, data=data.describe(), name=args.out.stem, progress=progress)
    record = save_descriptor(result, args.out, command=[PROG, *argv])
    print(f"trained {options.steps} steps ({record['epochs']} epochs) in {record['wall_seconds']:.0f} s: final loss "
          f"{record['final_loss']}; wrote {args.out} ({record['checkpoint']['bytes'] / 1024:.0f} KiB, sha256 "
          f"{record['checkpoint']['sha256'][:12]}...) and its record")
    return 0
