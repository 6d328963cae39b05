"""The host registry: which machines run agents, their state, capabilities and health.

- ``records``: ``HostRecord``, a row of the ``hosts`` table (no I/O, no imports of the
  store, so the store may depend on it);
- ``capabilities``: what ``bosun hosts check`` detects on a host (OS, CPUs, memory, agent
  CLIs and their versions) over the host's provider, in one round trip per probe;
- ``registry``: hosts of ``bosun.toml`` merged with those added at run time
  (``bosun hosts add``), with drain / enable / check / remove;
- ``health``: the dispatcher's periodic health checks and the reconciliation of runs on a
  host that comes back.

Import from the submodules; this package imports nothing so that the store can use
``bosun.hosts.records`` without a cycle.
"""
