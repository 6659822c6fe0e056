"""What a provenance store holds: its tables with their row counts, and its views (`auditor db status`)."""

from __future__ import annotations

from auditor.store import database

__all__ = ["table_counts"]


def table_counts(db_path, *, timeout: float = database.DEFAULT_TIMEOUT) -> tuple[list[tuple[str, int]], list[str]]:
    """([(table, rows)], [view]) of the store's main schema, by name (alembic_version left out)."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND database_name = current_database() "
            "AND table_name != 'alembic_version' ORDER BY table_name").fetchall()]
        counts = [(t, conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables]
        views = [r[0] for r in conn.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' "
            "AND database_name = current_database() ORDER BY view_name").fetchall()]
    return counts, views
