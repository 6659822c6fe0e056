"""`auditor show` (and every command that prints shares) prints them to three significant
figures: the small shares of early steps read as numbers (0.0412%), not as 0.0% everywhere."""

from auditor.cli.common import share
from auditor.store import attribution
from tests.support.cli import run_cli


def test_shares_print_three_significant_figures():
    assert [share(v) for v in (0.123456, 0.0304, 0.000412, 3e-7, 0.0, None)] == \
        ["12.3%", "3.04%", "0.0412%", "3e-05%", "0%", ""]


def test_show_prints_significant_digits(random_store, capsys):
    run = random_store.complete_run
    rows = attribution.sample_sources(random_store.db, run, 0, step=0, top=5)
    code, out, _ = run_cli(capsys, "--db", random_store.db, "show", f"{run}/0", "--step", "0", "--top", "5")
    assert code == 0
    printed = [line.split()[1] for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert printed == [f"{100 * r['share']:.3g}%" for r in rows]
    assert printed != [f"{100 * r['share']:.1f}%" for r in rows]  # what 0.1% rounding printed
