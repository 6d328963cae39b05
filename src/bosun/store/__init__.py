"""Persistence: the ``Store`` protocol and its SQL implementation.

``open_store(url)`` is the way in: it opens (and migrates) the database and returns a
``SqlStore``; everything else should depend only on the ``Store`` protocol.
"""

from bosun.store.base import RUN_FIELDS, TASK_FIELDS, Store, TaskFilter
from bosun.store.connect import open_store
from bosun.store.sql import SqlStore

__all__ = ["RUN_FIELDS", "TASK_FIELDS", "SqlStore", "Store", "TaskFilter", "open_store"]
