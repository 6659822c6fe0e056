"""The provenance store: PSPC posterior weights recorded in DuckDB, queried with SQL."""
