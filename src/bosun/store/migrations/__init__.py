"""Alembic migrations of bosun's schema, applied by ``bosun.store.connect.migrate`` on open."""
