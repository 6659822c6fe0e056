"""Alembic environment of the provenance store.

The library runs migrations programmatically (auditor.store.database.upgrade), passing an open
SQLAlchemy connection in config.attributes["connection"]. Run from the command line
(`alembic -c migrations/alembic.ini upgrade head` with sqlalchemy.url or $AUDITOR_DB), a
connection is opened here through auditor.store.database, with the same lock retry.
"""

from __future__ import annotations

from alembic import context

from auditor.store import database  # noqa: F401 - registers AlembicDuckDBImpl for the duckdb dialect
from auditor.store.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url") or "duckdb://", target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    path = url.removeprefix("duckdb:///") if url else database.resolve_db_path()
    eng = database.engine(path)
    try:
        with eng.begin() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        eng.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
