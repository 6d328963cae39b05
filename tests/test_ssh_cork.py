"""CorkedTransport: the packets of one turn of the loop go out in one write, in order.

The transport underneath is a recording double here; the same class carries every SSH
test's connection to a real sshd (tests/test_ssh_connection.py checks it merges there)."""

from __future__ import annotations

import asyncio
from typing import Any

from bosun.providers.ssh_cork import CorkedTransport, cork


class Recorder:
    """Stands for an asyncio transport: records what reaches it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.calls: list[str] = []
        self.closing = False
        self.extra = {"peername": ("127.0.0.2", 22)}

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


class Conn:
    def __init__(self, transport: Any) -> None:
        self._transport = transport


async def turn() -> None:
    await asyncio.sleep(0)


async def test_one_turns_packets_go_out_in_one_write_in_order() -> None:
    inner = Recorder()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    corked.write(b"a")
    corked.write(bytearray(b"b"))
    corked.writelines([b"c", b"d"])
    assert inner.written == []  # held until the turn ends
    assert corked.get_write_buffer_size() == 4 + 7
    await turn()
    assert inner.written == [b"abcd"]
    corked.write(b"e")
    await turn()
    assert inner.written == [b"abcd", b"e"]
    assert (corked.packets, corked.writes) == (5, 2)
    await turn()
    assert corked.writes == 2  # nothing held: no empty write


async def test_close_and_write_eof_write_what_is_held_first_abort_drops_it() -> None:
    inner = Recorder()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    corked.write(b"eof")
    corked.write_eof()
    assert inner.written == [b"eof"] and inner.calls == ["write_eof"]
    corked.write(b"bye")
    corked.close()
    assert inner.written == [b"eof", b"bye"] and inner.calls[-1] == "close"
    corked.write(b"late")  # after close: dropped at the turn's end, never written
    await turn()
    assert inner.written == [b"eof", b"bye"]

    inner = Recorder()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    corked.write(b"lost")
    corked.abort()
    await turn()
    assert inner.written == [] and inner.calls == ["abort"]


async def test_a_connection_error_on_write_is_left_to_the_connection() -> None:
    class Broken(Recorder):
        def write(self, data: bytes) -> None:
            raise BrokenPipeError("gone")

    corked = CorkedTransport(Broken(), asyncio.get_running_loop())
    corked.write(b"x")
    await turn()  # no exception escapes into the loop's callback
    assert corked.writes == 1


async def test_cork_installs_once_and_passes_the_rest_through() -> None:
    inner = Recorder()
    conn = Conn(inner)
    corked = cork(conn)
    assert isinstance(corked, CorkedTransport) and conn._transport is corked
    assert cork(conn) is corked  # not twice
    assert corked.get_extra_info("peername") == ("127.0.0.2", 22)
    assert cork(Conn(None)) is None
    assert cork(object()) is None
