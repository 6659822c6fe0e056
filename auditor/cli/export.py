"""`auditor export`, `auditor verify` and `auditor c2pa init-ca` (auditor.workflows.export,
auditor.exports): provenance records that third parties' tools read and verify."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

from auditor.cli.common import Parents, db_path, integer, print_table, sample_target, share


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def add_export(commands, parents: Parents) -> None:
    export = commands.add_parser(
        "export", parents=[parents.store], help="a sample's C2PA manifest or W3C PROV document",
        description="Export a complete sample's provenance. c2pa: the sample as PNG with an embedded, signed C2PA "
                    "manifest (trainedAlgorithmicMedia, the generator, the training set and network as "
                    "ingredients, the attribution assertion); without --cert/--key (or AUDITOR_C2PA_CERT and "
                    "AUDITOR_C2PA_KEY) an UNSIGNED manifest archive, named *.unsigned.c2pa. prov-json, prov-n: a "
                    "W3C PROV document. Files are written with mode 0600, atomically.")
    export.set_defaults(handler=cmd_export)
    export.add_argument("target", type=sample_target, metavar="RUN/SAMPLE", help="e.g. 3/0: run 3, sample 0")
    export.add_argument("--format", choices=("c2pa", "prov-json", "prov-n"), default="c2pa",
                        help="(default: %(default)s)")
    export.add_argument("--out", type=Path, metavar="FILE",
                        help="where to write (default: run{R}-sample{K}.c2pa.png, .unsigned.c2pa, .prov.json or "
                             ".provn in the current folder)")
    export.add_argument("--cert", type=Path, metavar="PEM",
                        help="signing certificate chain, the signer first (default: $AUDITOR_C2PA_CERT)")
    export.add_argument("--key", type=Path, metavar="PEM", help="its private key (default: $AUDITOR_C2PA_KEY)")
    export.add_argument("--top", type=integer(1), metavar="N",
                        help="sources listed (default: 10 in the C2PA assertion, every source of the final image "
                             "in PROV)")
    export.add_argument("--step-top", type=integer(0), default=5, metavar="N",
                        help="PROV: each step's top sources (default: %(default)s)")


def add_verify(commands, parents: Parents) -> None:
    verify = commands.add_parser(
        "verify", parents=[parents.store], help="check an exported image's C2PA manifest",
        description="Read a PNG's C2PA manifest with the c2pa library: check its signature and the hash binding it "
                    "to the image, whether the signer chains to --trust-anchor, and print the attribution "
                    "assertion. When the store (--db) holds the run, check that the assertion matches it. Any "
                    "failed check ends with an error (exit status 2).")
    verify.set_defaults(handler=cmd_verify)
    verify.add_argument("image", type=Path, metavar="IMAGE.png")
    verify.add_argument("--trust-anchor", type=Path, metavar="CA.pem",
                        help="a CA certificate to trust (e.g. ca.pem of `auditor c2pa init-ca`); without one the "
                             "signer is not checked against any")
    verify.add_argument("--json", action="store_true", help="print the attribution assertion as JSON")


def add_c2pa(commands, parents: Parents) -> None:
    c2pa = commands.add_parser("c2pa", parents=[parents.store], help="C2PA signing: a local CA",
                               description="Signing certificates for `auditor export --format c2pa`.")
    c2pa.set_defaults(handler=cmd_c2pa)
    actions = c2pa.add_subparsers(dest="c2pa_command", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init-ca", help="create a local CA and a signing certificate it issues",
        description="Create DIR/ca.pem and ca.key (a CA) and DIR/signer.pem and signer.key (a signing certificate "
                    "the CA issued, with the CA in its chain), EC P-256, mode 0600. C2PA validators refuse "
                    "self-signed signing certificates; a verifier trusts these signatures by adding ca.pem as a "
                    "trust anchor.")
    init.add_argument("--dir", type=Path, default=Path("c2pa-ca"), metavar="DIR", help="(default: %(default)s)")
    init.add_argument("--org", default="pspc-auditor", metavar="NAME",
                      help="organisation named in the certificates (default: %(default)s)")
    init.add_argument("--days", type=integer(1, 36500), default=3650, metavar="N",
                      help="validity; without a timestamp authority a signature verifies only while the signer is "
                           "valid (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="replace existing files")


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------
def cmd_export(args, argv=None) -> int:
    from auditor.exports.prov_document import Requester
    from auditor.exports.signing import resolve_credentials
    from auditor.workflows.export import ExportOptions, export_sample

    run_id, sample_index = args.target
    credentials = resolve_credentials(args.cert, args.key) if args.format == "c2pa" else None
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    options = ExportOptions(format=args.format, top=args.top, step_top=args.step_top, credentials=credentials,
                            requester=Requester(user), timeout=args.lock_timeout)
    result = export_sample(db_path(args), run_id, sample_index, options, args.out)
    export, size = result.export, len(result.export.data)
    if args.format != "c2pa":
        print(f"wrote {result.path} (W3C PROV, {args.format}, {size:,} bytes) in {result.seconds:.2f} s")
    elif export.signed:
        overhead = size - export.image_bytes
        print(f"wrote {result.path} ({size:,} bytes: the {export.image_bytes:,}-byte PNG + {overhead:,} bytes of "
              f"C2PA manifest) in {result.seconds:.2f} s")
        print(f"signed by {credentials.subject} (issuer {credentials.issuer}); check it with "
              f"`auditor verify {result.path} --trust-anchor CA.pem`")
    else:
        print(f"wrote {result.path} (UNSIGNED C2PA manifest archive, {size:,} bytes) in {result.seconds:.2f} s")
        print("nothing in it is signed: export with --cert and --key to embed a signed manifest "
              "(`auditor c2pa init-ca` creates a local CA and signer)")
    return 0


def _print_assertion(claim: dict) -> None:
    dataset = claim.get("dataset") or {}
    print(f"attribution: run {claim.get('run_id')}, sample {claim.get('sample_index')}; training set "
          f"{dataset.get('name')} ({str(dataset.get('fingerprint'))[:16]}...); captured mass "
          f"{share(claim.get('captured_mass'))} by {claim.get('sources_total')} sources")
    if claim.get("network"):
        print(f"network: {claim['network'].get('name')} (sha256 {str(claim['network'].get('sha256'))[:16]}...)")
    verdict = claim.get("verdict") or {}
    if verdict.get("status") == "assessed":
        print(f"verdict: {verdict.get('verdict')} ({verdict.get('reason')})")
    else:
        print(f"verdict: {verdict.get('status')} ({verdict.get('note')})")
    rows = []
    for source in claim.get("top_sources") or []:
        regions = source.get("regions_of_interest") or []
        box = ""
        if regions:
            r = regions[0]["region"][0]
            box = f"{r['width']}x{r['height']} at ({r['y']},{r['x']}), {regions[0].get('pixels')} px"
        rows.append([source.get("rank"), share(source.get("share")), share(source.get("flip_share")),
                     share(source.get("trajectory_share")), source.get("image_id"), source.get("label_name"),
                     source.get("owner"), source.get("license"), source.get("source_uri"), box])
    print_table(["#", "share", "mirrored", "trajectory", "image id", "label", "owner", "license", "source",
                 "dominated region"], rows)


def cmd_verify(args, argv=None) -> int:
    from auditor.workflows.export import verify_image

    report = verify_image(args.image, trust_anchor=args.trust_anchor, db_path=db_path(args), timeout=args.lock_timeout)
    reading = report.reading
    if args.json:
        json.dump(reading.assertion, sys.stdout, indent=1)
        print()
        return 0
    trust = (f"signer trusted (chains to {args.trust_anchor})" if reading.trusted
             else "signer NOT checked against a trust anchor (pass --trust-anchor CA.pem)")
    print(f"{args.image}: C2PA manifest {reading.manifest_label}: signature and image hash verified; {trust}")
    signer = reading.signer
    print(f"signed by {signer.get('common_name')} (issuer {signer.get('issuer')}, {signer.get('alg')})")
    print(f"store: {report.store}")
    _print_assertion(reading.assertion)
    return 0


def cmd_c2pa(args, argv=None) -> int:
    from auditor.exports.signing import create_local_ca

    ca = create_local_ca(args.dir, organization=args.org, days=args.days, force=args.force)
    print(f"local C2PA CA in {args.dir} (files mode 0600):")
    print_table(["file", "what"], [[ca.ca_cert, "the CA certificate: verifiers add it as their trust anchor"],
                                   [ca.ca_key, "the CA's private key: keep it secret (it issues signers)"],
                                   [ca.signer_cert, "the signing certificate, then the CA (the chain exports embed)"],
                                   [ca.signer_key, "the signer's private key: keep it secret"]])
    print(f"sign:   auditor export RUN/SAMPLE --format c2pa --cert {ca.signer_cert} --key {ca.signer_key}")
    print(f"verify: auditor verify run1-sample0.c2pa.png --trust-anchor {ca.ca_cert}")
    return 0
