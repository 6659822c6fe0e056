"""Benchmark: how closely PSPC reproduces the project's network (paper Figs. 2, 3, 4, 7, 9).

    PYTHONPATH=. .venv/bin/python bench/fidelity.py --quick --out out/fidelity-quick   # ~30 min, 2 CPU cores
    PYTHONPATH=. .venv/bin/python bench/fidelity.py --out out/fidelity                 # full (hours on a CPU)
    PYTHONPATH=. .venv/bin/python bench/fidelity.py --quick --tune --out out/tuned      # + Appendix B tuning
    PYTHONPATH=. .venv/bin/python bench/fidelity.py --quick --db provenance.duckdb       # + stored: /fidelity pages

On Fashion-MNIST with the network in --network (default checkpoints/fmnist-unet.pt):
1. Gradient sensitivity G(x, y, t) of the network (Eq. 8) on held-out images, and the
   gradient-concentration table (Fig. 3): the side of the centred square holding 50 / 75 /
   95 % of G per t. PSPC-Flex uses masks built from these maps (Eq. 12).
2. MSE against the network per t for empirical, Gaussian, CFDM, PSPC-Square and PSPC-Flex
   on the forward process (held-out test images, z = x + t eps at --ts) and on the reverse
   process (every step of the network's own Euler trajectories from seeded noise) (Figs. 4, 7).
3. Samples from shared initial noise with every denoiser (Euler, EDM schedule) and their
   mean descriptor similarity to the network's samples (Fig. 9). The descriptor is SSCD when
   $PSPC_SSCD_CHECKPOINT names a checkpoint, else the clearly named pixel-correlation fallback.
4. With --tune: per step, s(t) and lambda(t) chosen by the MSE against the network on
   separate states (other seeds), saved as schedule.json, and evaluated as two more rows.

Everything goes to --out: fidelity.json (every number and the record: command, dataset
fingerprints, network sha256, denoiser schedules, seeds, descriptor, versions, timings),
summary.md (the tables and the verdict on the paper's finding) and PNG plots. With --db the
study is also stored in that provenance store (`auditor fidelity list`, the service's
/fidelity pages); `auditor fidelity import OUT/fidelity.json` stores an earlier run.

The study itself is the library's (auditor.workflows.fidelity.run_study, with the options of
auditor.cli.fidelity.add_study_options as a StudyOptions, shared with `auditor fidelity run`); the plots are
reports.plots'. This script parses, runs, prints the tables and writes the files.

A full Jacobian of the network costs H x W = 784 backward passes per draw (about 30-100 s
on 2 CPU cores), so G is computed on a grid of noise levels (--sensitivity-grid, also the
rows of the concentration table) and PSPC-Flex at any other t uses the grid level nearest
in log t. Where lambda(t) = 1 Flex is the whole image and needs no G.

The quick preset (--quick) uses 5,000 training images (10,000 with x-flips), 8 test images,
6 forward noise levels, 8 trajectories / samples of 18 steps, and G from 8 draws at
t = 0.03, 0.1, 0.3, 1, 3, 10; explicit options override it. The full configuration uses all 60,000
training images, 64 test images, 8 noise levels (0.01 ... 30), 64 trajectories / samples
and G from 16 draws at each of the 8 levels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from auditor.cli.fidelity import add_study_options, study_options  # noqa: E402
from auditor.errors import StoreError  # noqa: E402
from auditor.store.studies import StudyError, store_study  # noqa: E402
from auditor.workflows.fidelity import FINDING_RANGE, Study, run_study  # noqa: E402
from reports import plots  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Defaults in brackets are the "
                                     "full configuration; --quick changes them to the quick one.")
    add_study_options(parser)
    parser.add_argument("--out", type=Path, help="output folder [out/fidelity-<timestamp>]")
    parser.add_argument("--db", metavar="PATH", help="also store the study in this provenance store (at the current "
                        "schema: `auditor db upgrade`)")
    return parser


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _show(text: str) -> None:
    print(text, flush=True)


def write_files(study: Study, out: Path) -> None:
    """fidelity.json, sensitivity.pt, summary.md and the PNG plots of a finished study."""
    result, options = study.result, study.result["record"]["configuration"]
    (out / "fidelity.json").write_text(json.dumps(result, indent=1, default=float))
    torch.save({t: g.float() for t, g in study.sensitivity.maps.items()}, out / "sensitivity.pt")
    titles = {"forward": f"forward process ({options['test_images']} test images)",
              "reverse": f"reverse process ({options['samples']} network trajectories, {options['steps']} Euler steps)"}
    for process, c in study.curves.items():
        (out / f"mse_{process}.png").write_bytes(plots.fidelity_curves_plot(
            c.times, c.names, c.mse, c.stderr, titles.get(process, process), band=FINDING_RANGE))
    table = study.concentration
    centres = []
    for t in table.times:
        g = study.sensitivity(t)
        centres.append(g[g.shape[0] // 2, g.shape[1] // 2].numpy())
    (out / "concentration.png").write_bytes(plots.concentration_plot(table.times, table.fractions, table.mean_side,
                                                                      centres))
    if study.matrix is not None:
        matrix = study.matrix
        np.save(out / "samples.npy", np.stack([study.samples[n].numpy() for n in matrix.names]))
        (out / "samples.png").write_bytes(plots.samples_plot({n: s.numpy() for n, s in study.samples.items()}))
        (out / "similarity.png").write_bytes(plots.similarity_heatmap(matrix.names, matrix.mean,
                                                                      matrix.descriptor["name"]))

    training_set, test_set, record = study.training_set, study.test_set, result["record"]
    summary = ["# Denoisers against the network", "",
               f"network `{study.network_path}` (sha256 {study.network.record.get('sha256', '?')}), training set "
               f"{training_set.name} {len(training_set)} images (x-flip {training_set.xflip}, fingerprint "
               f"{training_set.fingerprint[:16]}), held-out {test_set.name} ({test_set.fingerprint[:16]}); "
               f"seed {options['seed']}.", "", "```", table.table(), "```", ""]
    for c in study.curves.values():
        summary += ["```", c.table(), "```", ""]
    if study.matrix is not None:
        summary += ["```", study.matrix.summary(), "```", ""]
    if study.tuned:
        summary += ["```", study.tuned.table(), "```", ""]
    summary += ["## The paper's finding on this data", "", *study.findings, "",
                f"timings (s): {json.dumps(record['timings_s'])}", ""]
    (out / "summary.md").write_text("\n".join(summary))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = [sys.executable, *sys.argv] if argv is None else ["bench/fidelity.py", *argv]
    try:
        options = study_options(args).resolved()
        args.out = args.out or REPO / "out" / f"fidelity-{datetime.now():%Y%m%d-%H%M%S}"
        if args.db:
            from auditor.store import database

            database.require_current(args.db)  # before hours of work, not after
        study = run_study(options, out=args.out, command=command, log=_log, show=_show)
    except (StudyError, StoreError) as exc:
        print(f"fidelity: error: {exc}", file=sys.stderr)
        return 2
    write_files(study, args.out)
    print("\n".join(study.findings))
    _log(f"wrote {args.out}: fidelity.json, summary.md, sensitivity.pt, "
         f"{', '.join(sorted(p.name for p in args.out.glob('*.png')))}")
    if args.db:
        study_id = store_study(args.db, study.result, source=str(args.out / "fidelity.json"))
        _log(f"stored as fidelity study {study_id} in {args.db} (`auditor fidelity list`, /fidelity/{study_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
