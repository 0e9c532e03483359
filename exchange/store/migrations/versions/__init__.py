"""Alembic revisions of the store schema, one module each (a package so the wheel ships them)."""
