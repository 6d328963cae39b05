"""One socket write per turn of the event loop for an SSH connection's packets.

asyncssh hands every SSH packet to its transport as it is made, and an asyncio socket
transport sends each at once: one ``send`` system call, one TCP segment, one wake-up of
the host's ``sshd``. bosun makes packets in bursts (the dispatcher starts several runs of
a host in one turn; a launch is two SFTP ``mkdir`` requests and then one session
request; a probe answers many runs): measured in ``bench/ssh.py`` (P2), about 11 packets
per task went out in about 2 writes once merged, and the whole machine's CPU per task
fell by 14-24% (docs/benchmarks.md).

:class:`CorkedTransport` stands between the connection and its transport: what is written
in one turn of the loop is joined and written once, at the start of the next turn
(``call_soon``), in the same order. ``close`` and ``write_eof`` write what is held first;
``abort`` drops it, as an abort drops a transport's own buffer. Everything else goes to
the transport underneath.

:func:`cork` installs it on a connection that asyncssh has made. asyncssh offers no hook
for its transport, so this replaces the connection's ``_transport`` attribute (the one
place asyncssh writes packets, ``SSHConnection._send``, reads it on every packet); when a
later asyncssh has no such attribute, the connection is left as it is (each packet its
own write, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["CorkedTransport", "cork"]


class CorkedTransport:
    """A transport that writes what it is given in one turn of the loop at once."""

    def __init__(self, inner: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self._loop = loop
        self._held: list[bytes] = []
        #: packets handed to ``write`` and writes made of them (for benchmarks and tests)
        self.packets = 0
        self.writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))
        self.packets += 1

    def writelines(self, lines: list[bytes | bytearray | memoryview]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Write what is held now (nothing when the transport is closing)."""
        held, self._held = self._held, []
        if not held or self.inner.is_closing():
            return
        self.writes += 1
        # (asyncssh's own write ignores these too: the loss is reported apart)
        with contextlib.suppress(ConnectionError):
            self.inner.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self.inner.close()

    def write_eof(self) -> None:
        self.flush()
        self.inner.write_eof()

    def abort(self) -> None:
        self._held.clear()
        self.inner.abort()

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self._held)) + int(self.inner.get_write_buffer_size())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def cork(conn: object) -> CorkedTransport | None:
    """Put a :class:`CorkedTransport` between ``conn`` (an asyncssh connection) and its
    transport; return it, or None when ``conn`` has no transport this can stand in front
    of (then nothing changed)."""
    transport = getattr(conn, "_transport", None)
    if isinstance(transport, CorkedTransport):
        return transport
    if transport is None or not callable(getattr(transport, "write", None)):
        return None
    corked = CorkedTransport(transport, asyncio.get_running_loop())
    setattr(conn, "_transport", corked)  # noqa: B010 (a private attribute: see the docstring)
    return corked
