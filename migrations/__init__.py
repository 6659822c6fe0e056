"""Alembic revisions of the provenance store's schema, shipped as a package so that an
installed (non-editable) auditor finds them with importlib.resources."""
