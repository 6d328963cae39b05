"""Alembic revision scripts, oldest first; each one changes ``bosun.store.schema`` by one step."""
