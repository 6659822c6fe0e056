"""The `auditor` command line: a thin layer over auditor.workflows and auditor.store."""

from auditor.cli.main import main

__all__ = ["main"]
