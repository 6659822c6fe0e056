"""The store's commands: `db upgrade|status`, `ingest`, `runs`, `show`, `sql`, `keys create|list|revoke`."""

from __future__ import annotations

import sys

from auditor.cli.common import (
    MAX_INT, PROG, CLIError, Parents, add_image_folder_options, db_path, integer, load_data, positive, print_table,
    sample_target, share, when
)
from auditor.errors import StoreError
from auditor.store import database
from auditor.store.calibrations import VERDICTS

# = pspc.posterior.scores.SCORES (a test checks it), here so that building the parser needs no engine import
SCORE_NAMES = ("final-share", "trajectory-share", "informative-share", "step-weighted-share", "region", "nda")

VERDICT_OPTIONS = tuple(v.replace(" ", "-") for v in VERDICTS)  # copy, partial-copy, no-copy-found, inconclusive


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------
def add_db(commands, parents: Parents) -> None:
    store = parents.store
    db = commands.add_parser("db", parents=[store], help="create, migrate or inspect the store",
                             description="Schema migrations (Alembic, migrations/) and a summary of the store.")
    db.set_defaults(handler=cmd_db)
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("upgrade", parents=[store], help="create the file or migrate it to the current schema")
    db_commands.add_parser("status", parents=[store], help="schema revision, tables and row counts")


def add_ingest(commands, parents: Parents) -> None:
    ingest = commands.add_parser("ingest", parents=[parents.store], help="record a training set (idempotent)",
                                 description="Record a training set's fingerprint, image ids, hashes and metadata. "
                                             "Ingesting the same pixels again changes nothing.")
    ingest.set_defaults(handler=cmd_ingest)
    ingest.add_argument("spec", metavar="SPEC", help="training data spec, as for `pspc --data`")
    ingest.add_argument("--limit", type=integer(), metavar="N", help="keep only the first N images (default: all)")
    add_image_folder_options(ingest)


def add_runs(commands, parents: Parents) -> None:
    from auditor.store.run_kinds import KIND_NAMES

    runs = commands.add_parser("runs", parents=[parents.store], help="list runs",
                               description="Runs, newest first: status, kind (sample, network-explained, audit), "
                                           "where the image comes from (generator, or an audit's file), what "
                                           "attributes it, method, dataset, samples, steps, time.")
    runs.set_defaults(handler=cmd_runs)
    runs.add_argument("--dataset", metavar="ID", help="only runs on this dataset (id or fingerprint prefix)")
    runs.add_argument("--kind", choices=KIND_NAMES, help="only runs of this kind")
    runs.add_argument("--verdict", choices=VERDICT_OPTIONS,
                      help="only runs with at least one image of this stored copy verdict")


def add_show(commands, parents: Parents) -> None:
    show = commands.add_parser("show", parents=[parents.store], help="top training sources of a sample",
                               description="The training images a sample was built from (share of its pixels), "
                                           "for the final image or the denoiser output at one step.")
    show.set_defaults(handler=cmd_show)
    show.add_argument("target", type=sample_target, metavar="RUN/SAMPLE", help="e.g. 3/0: run 3, sample 0")
    show.add_argument("--step", type=integer(), metavar="N", help="D(z_t) at step N instead of the final image")
    show.add_argument("--top", type=integer(), default=10, metavar="N", help="how many sources (default: %(default)s)")
    show.add_argument("--score", choices=SCORE_NAMES, default=None, metavar="NAME",
                      help=f"rank the final image's sources by this attribution score ({', '.join(SCORE_NAMES)}; "
                           f"default: the headline score, measured best by bench/attribution.py)")


def add_sql(commands, parents: Parents) -> None:
    sql = commands.add_parser("sql", parents=[parents.store], help="read-only SQL",
                              description="Run one read-only statement (SELECT, WITH ... SELECT, EXPLAIN, DESCRIBE, "
                                          "SHOW) on the store. Tables and views: see README.md.")
    sql.set_defaults(handler=cmd_sql)
    sql.add_argument("query", metavar="QUERY")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table", help="(default: %(default)s)")
    sql.add_argument("--max-rows", type=integer(), default=10000, metavar="N", help="(default: %(default)s)")


def add_keys(commands, parents: Parents) -> None:
    store = parents.store
    keys = commands.add_parser("keys", parents=[store], help="API keys of the report service",
                               description="Keys are shown once, at creation; the store keeps only their sha256. "
                                           "Scopes: read (every GET), submit (POST /api/jobs; implies read).")
    keys.set_defaults(handler=cmd_keys)
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", parents=[store], help="create a key and print it (once)")
    create.add_argument("name", help="who or what uses the key")
    create.add_argument("--scope", choices=("read", "submit"), default="read", help="(default: %(default)s)")
    key_commands.add_parser("list", parents=[store], help="keys (never their secrets)")
    revoke = key_commands.add_parser("revoke", parents=[store], help="revoke a key (the service notices within 1 s)")
    revoke.add_argument("key_id", type=integer(high=MAX_INT), metavar="ID")


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------
def cmd_db(args, argv=None) -> int:
    from auditor.store.inventory import table_counts

    path = db_path(args)
    if args.db_command == "upgrade":
        before, after = database.upgrade(path, timeout=args.lock_timeout)
        if before == after:
            print(f"{path}: schema revision {after} (up to date)")
        else:
            print(f"{path}: upgraded schema {before or 'empty'} -> {after}")
        return 0
    revision = database.current_revision(path, timeout=args.lock_timeout) if path.exists() else None
    head = database.head_revision()
    if not path.exists():
        raise StoreError(f"{path}: no provenance store here; create it with `auditor db upgrade`")
    if revision is not None and revision not in database.known_revisions():
        database.require_current(path, timeout=args.lock_timeout)  # raises the "newer version" SchemaError
    state = "current" if revision == head else f"needs `auditor db upgrade` to {head}"
    print(f"store     {path.resolve()} ({path.stat().st_size / 2**20:.1f} MiB)")
    print(f"revision  {revision or 'none'} ({state})")
    counts, views = table_counts(path, timeout=args.lock_timeout)
    print_table(["table", "rows"], [[t, n] for t, n in counts])
    if views:
        print(f"views: {', '.join(views)}")
    return 0


def cmd_ingest(args, argv=None) -> int:
    from auditor.store.datasets import ingest

    path = db_path(args)
    database.require_current(path, timeout=args.lock_timeout)
    data = load_data(args.spec, args)
    dataset_id, created = ingest(path, data, timeout=args.lock_timeout)
    print(f"dataset {dataset_id}: {'created' if created else 'already present'} "
          f"({data.name}, {len(data)} images {'x'.join(map(str, data.image_shape))})")
    print(f"fingerprint {data.fingerprint}")
    return 0


def cmd_runs(args, argv=None) -> int:
    from auditor.store.datasets import find_dataset
    from auditor.store.run_kinds import image_source
    from auditor.store.runs import run_summaries

    path = db_path(args)
    dataset_id = None
    if args.dataset is not None:
        dataset_id = find_dataset(path, args.dataset, timeout=args.lock_timeout)["id"]
    rows = run_summaries(path, dataset_id, kind=args.kind, verdict=args.verdict, timeout=args.lock_timeout)
    if not rows:
        print("no runs" + (f" of kind {args.kind}" if args.kind else "")
              + (f" with a {args.verdict.replace('-', ' ')} verdict" if args.verdict else "")
              + (f" on dataset {dataset_id}" if dataset_id is not None else "") + "; record one with `auditor sample`")
        return 0
    table = []
    for r in rows:
        steps = f"{r['steps']}/{r.get('planned_steps') or '?'}"
        seconds = r.get("seconds")
        table.append([r["id"], r["status"], r["kind"], image_source(r), r.get("explainer") or "none",
                      r.get("method") or "", f"{r['dataset_id']} {r.get('dataset') or ''}".strip(), r["samples"],
                      steps, when(r.get("created_at")), "" if seconds is None else f"{seconds:.1f}"])
    print_table(["run", "status", "kind", "image from", "attributed by", "method", "dataset", "samples", "steps",
                 "started (UTC)", "seconds"], table)
    failed = [r for r in rows if r.get("error")]
    for r in failed[:3]:
        print(f"run {r['id']} error: {r['error'].strip().splitlines()[-1] if r['error'].strip() else ''}")
    return 0


def _largest_patch(patches) -> str:
    if not patches:
        return ""
    p = patches[0]
    if isinstance(p, (tuple, list)) and len(p) >= 7:
        return f"step {p[0]} @({p[2]},{p[3]}) {p[4]}x{p[5]} w={p[6]:.3f}"
    return str(p)


def cmd_show(args, argv=None) -> int:
    from auditor.store.attribution import sample_sources
    from auditor.store.run_kinds import run_kind
    from auditor.store.runs import load_run

    path = db_path(args)
    run_id, sample_index = args.target
    positive(args.top, "--top")
    if args.step is not None and args.step < 0:
        raise CLIError(f"--step must be >= 0, got {args.step}")
    if args.step is not None and args.score is not None:
        raise CLIError("--score ranks the final image's sources; --step shows one step's shares: give one")
    database.require_current(path, timeout=args.lock_timeout)
    run = load_run(path, run_id, timeout=args.lock_timeout)[0]
    if args.step is None and run_kind(run["kind"]).attributed:
        return _show_scored(path, run, sample_index, args)
    rows = sample_sources(path, run_id, sample_index, step=args.step, top=args.top, timeout=args.lock_timeout)
    what = f"D(z_t) at step {args.step}" if args.step is not None else _image_name(run)
    print(f"run {run_id}, sample {sample_index}, {what}: top {len(rows)} training sources (share of the pixels)")
    print(f"run {run_id}: {_made_by(run)}")
    print(f"verdict: {_verdict_line(path, run_id, sample_index, args.lock_timeout)}")
    counterfactual = _counterfactual_line(path, run, sample_index, args.lock_timeout)
    if counterfactual:
        print(counterfactual)
    table = [[rank, share(r.get("share")), share(r.get("flip_share")), r.get("image_index"),
              r.get("image_id"),
              r.get("label_name") or r.get("label"), r.get("owner"), r.get("license"), r.get("source_uri"),
              _largest_patch(r.get("patches") or [])] for rank, r in enumerate(rows, 1)]
    print_table(["#", "share", "mirrored", "index", "image id", "label", "owner", "license", "source", "largest patch"],
                table)
    return 0


def _show_scored(path, run: dict, sample_index: int, args) -> int:
    """`show` of the final image: its sources ranked by an attribution score (default: the headline)."""
    from auditor.store.scores import HEADLINE_SCORE, SCORES, is_fraction, score_sources

    score = args.score or HEADLINE_SCORE
    rows = score_sources(path, run["id"], sample_index, score=score, top=args.top, timeout=args.lock_timeout)
    label = "headline score" if score == HEADLINE_SCORE else "score"
    print(f"run {run['id']}, sample {sample_index}, {_image_name(run)}: top {len(rows)} training sources by {score} "
          f"({label}: {SCORES[score].meaning})")
    print(f"run {run['id']}: {_made_by(run)}")
    print(f"verdict: {_verdict_line(path, run['id'], sample_index, args.lock_timeout)}")
    counterfactual = _counterfactual_line(path, run, sample_index, args.lock_timeout)
    if counterfactual:
        print(counterfactual)
    value = share if is_fraction(score) else (lambda v: f"{v:.3g}")
    print_table(["#", score, "final share", "index", "image id", "label", "owner", "license", "source"],
                [[rank, value(r["score"]), share(r["final_share"]), r["image_index"], r["image_id"],
                  r.get("label_name") or r.get("label"), r.get("owner"), r.get("license"), r.get("source_uri")]
                 for rank, r in enumerate(rows, 1)])
    return 0


def _verdict_line(path, run_id: int, sample_index: int, timeout: float) -> str:
    """The sample's stored copy verdict in one sentence (Verdict.sentence), or that there is none."""
    from auditor.store.calibrations import load_verdicts
    from reports.pages.sample import NO_VERDICT, verdict_badge

    badge = verdict_badge(load_verdicts(path, run_id, timeout=timeout).get(sample_index))
    return NO_VERDICT if badge is None else badge.sentence


def _counterfactual_line(path, run: dict, sample_index: int, timeout: float) -> str:
    """For a counterfactual run, what it removed and changed; for any other sample, how many
    counterfactuals it has ('' when none)."""
    from auditor.store.counterfactuals import counterfactuals_of, load_counterfactual

    if run["kind"] == "counterfactual":
        if run["status"] != "complete":
            details = run["details"]
            return f"counterfactual of {details['parent_run_id']}/{details['parent_sample']} ({run['status']})"
        o = load_counterfactual(path, run["id"], removed_ids=5, timeout=timeout)
        ids = ", ".join(r["image_id"] for r in o["removed"]) + (", ..." if o["removed_count"] > 5 else "")
        return (f"counterfactual of {o['parent_run_id']}/{o['parent_sample']} ({o['mode']}) without {o['removed_count']} "
                f"training image(s) ({ids}): MSE {o['mse']:.3g}, max |change| {o['max_abs']:.3g} against the parent")
    found = counterfactuals_of(path, run["id"], sample_index, timeout=timeout)
    if not found:
        return ""
    return (f"counterfactuals: {len(found)} (`{PROG} counterfactual {run['id']}/{sample_index} --list`); largest change "
            f"MSE {max(r['mse'] for r in found):.3g}")


def _image_name(run: dict) -> str:
    """What `show` calls a run's final image: the audited image for an audit."""
    from auditor.store.run_kinds import run_kind

    return "audited image" if run_kind(run["kind"]).audit else "final image"


def _made_by(run: dict) -> str:
    """A run's kind, where its image comes from and what attributes it, in one line."""
    from auditor.store.run_kinds import describe_run, image_source, run_kind

    facts = describe_run(run["kind"], run["details"], run["denoiser"], run["sampler"])
    kind = run_kind(run["kind"])
    if kind.audit:
        made = f"audited image {image_source(facts)}"
    else:
        made = f"generated by {image_source(facts) or '?'}"
    attributed = f"attributed by PSPC ({facts['explainer']})" if facts["explainer"] else "no attribution"
    return f"{kind.label}; {made}; {attributed}; method {facts['method'] or '?'}"


def cmd_sql(args, argv=None) -> int:
    from auditor.store.query import format_result, run_query

    if args.max_rows is not None and args.max_rows < 0:
        raise CLIError(f"--max-rows must be >= 0, got {args.max_rows}")
    result = run_query(db_path(args), args.query, max_rows=args.max_rows, timeout=args.lock_timeout)
    sys.stdout.write(format_result(result, args.format))
    if result.truncated and args.format != "table":
        print(f"{PROG}: output truncated to {args.max_rows} rows (raise --max-rows)", file=sys.stderr)
    return 0


def cmd_keys(args, argv=None) -> int:
    from auditor.service import auth as access
    from auditor.store import keys

    path = db_path(args)
    if args.keys_command == "create":
        key, token = access.create_key(path, args.name, [args.scope], timeout=args.lock_timeout)
        print(f"key {key.id} ({key.name}), scope {','.join(key.scopes)}:")
        print(token)
        print("store it now: it is not shown again (the store keeps only its sha256)", file=sys.stderr)
        return 0
    if args.keys_command == "list":
        rows = keys.list_keys(path, timeout=args.lock_timeout)
        if not rows:
            print("no API keys: the service runs in local single-user mode; create one with `auditor keys create NAME`")
            return 0
        print_table(["id", "name", "scopes", "created (UTC)", "last used (UTC)", "revoked (UTC)"],
                    [[k.id, k.name, ",".join(k.scopes), when(k.created_at), when(k.last_used_at),
                      when(k.revoked_at)] for k in rows])
        return 0
    key = keys.revoke_key(path, args.key_id, timeout=args.lock_timeout)
    print(f"key {key.id} ({key.name}) revoked at {when(key.revoked_at)} UTC")
    return 0
