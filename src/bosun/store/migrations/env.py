"""Alembic environment of bosun's schema.

bosun runs it programmatically (``bosun.store.connect.migrate``), handing over a connection
that is already inside a write transaction in ``config.attributes["connection"]``: the
whole upgrade is then one transaction, and two processes opening a fresh database at once
cannot both create the tables.

To write a new revision, point an ``alembic.ini`` at this directory
(``script_location = src/bosun/store/migrations``) and at a scratch database
(``sqlalchemy.url = sqlite:///dev.db``), then run ``alembic revision --autogenerate``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from bosun.store.schema import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    # Developer use from the alembic command line, against a plain (sync) URL.
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url in alembic.ini, or run through bosun.store")
    engine = sa.create_engine(url)
    with engine.connect() as dev_connection:
        context.configure(connection=dev_connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
