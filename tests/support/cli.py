"""The `auditor` command line, run in-process."""

from __future__ import annotations

from auditor import cli


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `auditor ARGV...` (arguments passed through str())."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
