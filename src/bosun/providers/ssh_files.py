"""A host's files over the connection's SFTP channel: run files, output reads from
offsets, directories, exit codes, transfers.

SFTP errors that mean the connection died become :class:`~bosun.errors.HostUnreachable`;
other failures become a :class:`~bosun.errors.ProviderError` naming the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import uuid
from collections.abc import Iterator, Mapping, Sequence

import asyncssh

from bosun.errors import ProviderError
from bosun.providers.local import missing_run_dir, used_run_dir
from bosun.providers.ssh_conn import SshLink

#: A lost link: not a file-system error; the link reports it as an unreachable host.
_LINK_LOST = (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)

__all__ = ["HostFiles", "close_all"]


class HostFiles:
    """File operations on one host (through its :class:`SshLink`)."""

    def __init__(self, link: SshLink, name: str) -> None:
        self.link = link
        self.name = name

    async def makedirs(self, path: str) -> None:
        """``mkdir -p`` over SFTP: one round trip for a new directory whose parent exists,
        two for one that exists."""
        await self._makedirs(path, depth=0)

    async def _makedirs(self, path: str, depth: int) -> None:
        async with self.link.files() as sftp:
            try:
                await sftp.mkdir(path)
                return
            except asyncssh.SFTPNoSuchFile:
                pass  # the parent is missing
            except _LINK_LOST:
                raise
            except asyncssh.SFTPError as exc:
                if await sftp.isdir(path):  # it exists (usually), or was made meanwhile
                    return
                raise self.fs_error("create directory", path, exc) from exc
        parent = posixpath.dirname(path.rstrip("/"))
        if depth > 64 or parent in ("", "/", ".", path):
            raise self.fs_error("create directory", path)
        await self._makedirs(parent, depth + 1)
        await self._makedirs(path, depth + 1)

    @contextlib.contextmanager
    def fs_errors(self, what: str, path: str, *, local: bool = False) -> Iterator[None]:
        """An SFTP failure (with ``local``, also a local ``OSError``) becomes a
        ``ProviderError`` naming ``what`` and ``path``; a lost connection passes through,
        for the link to report as an unreachable host."""
        try:
            yield
        except _LINK_LOST:
            raise
        except asyncssh.SFTPError as exc:
            raise self.fs_error(what, path, exc) from exc
        except OSError as exc:
            if not local:
                raise
            raise self.fs_error(what, path, exc) from exc

    def fs_error(self, what: str, path: str, exc: Exception | None = None) -> ProviderError:
        reason = f": {exc.reason}" if isinstance(exc, asyncssh.SFTPError) else ""
        return ProviderError(
            f"cannot {what} {path} on host {self.name}{reason}",
            hint="check the remote user's permissions and free space on the host",
        )

    async def write_launch_files(
        self, run_dir: str, meta: bytes, files: Mapping[str, bytes], env_text: bytes
    ) -> list[asyncssh.SFTPClientFile]:
        """Open every file of the launch at once and write them: two pipelined round
        trips. ``cmd.json`` is created exclusively (a run directory is launched once); the
        others are opened without truncation, so a refused launch changes no old file.
        Returns the open handles: the caller closes them."""
        targets = {"cmd.json": meta, **files, "env.sh": env_text}
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT
        async with self.link.files() as sftp:
            dirs = sorted({posixpath.dirname(f"{run_dir}/{n}") for n in files} - {run_dir}, key=len)
            for d in dirs:  # parents first (sorted by length); usually there are none
                await self.makedirs(d)
            opened = await asyncio.gather(
                *(
                    sftp.open(
                        f"{run_dir}/{name}",
                        flags | (asyncssh.FXF_EXCL if name == "cmd.json" else 0),
                        asyncssh.SFTPAttrs(permissions=0o600 if name == "env.sh" else 0o644),
                        encoding=None,
                    )
                    for name in targets
                ),
                return_exceptions=True,
            )
            handles = [h for h in opened if isinstance(h, asyncssh.SFTPClientFile)]
            failed = dict(
                (name, h)
                for name, h in zip(targets, opened, strict=True)
                if isinstance(h, BaseException)
            )
            if failed:
                await close_all(handles)
                if "env.sh" not in failed:  # never keep an environment file we created
                    await self.remove(f"{run_dir}/env.sh")
                raise self.launch_files_error(run_dir, failed)
            try:
                await asyncio.gather(
                    *(h.write(data) for h, data in zip(handles, targets.values(), strict=True))
                )
            except BaseException:
                await close_all(handles)
                raise
        return handles

    def launch_files_error(self, run_dir: str, failed: Mapping[str, BaseException]) -> Exception:
        for exc in failed.values():
            if not isinstance(exc, asyncssh.SFTPError):
                return exc if isinstance(exc, Exception) else ProviderError(str(exc))
            if isinstance(exc, asyncssh.SFTPConnectionLost | asyncssh.SFTPNoConnection):
                return self.link._lost_error(exc)
        meta = failed.get("cmd.json")
        if isinstance(meta, asyncssh.SFTPNoSuchFile):
            return missing_run_dir(run_dir, f" on host {self.name}")
        if isinstance(meta, asyncssh.SFTPFailure | asyncssh.SFTPFileAlreadyExists):
            return used_run_dir(run_dir)
        name, exc = next(iter(failed.items()))
        return self.fs_error(
            "write", f"{run_dir}/{name}", exc if isinstance(exc, Exception) else None
        )

    async def put(
        self, sftp: asyncssh.SFTPClient, path: str, data: bytes, mode: int = 0o644
    ) -> None:
        with self.fs_errors("write", path):
            f = await sftp.open(path, "wb", asyncssh.SFTPAttrs(permissions=mode))
            try:
                await f.write(data)
            finally:
                await f.close()

    # -- file transfer (remote workspaces) ----------------------------------------------
    async def upload(self, local_path: str, remote_path: str) -> None:
        """Copy a local file to the host (SFTP), e.g. a git bundle."""
        async with self.link.files() as sftp:
            with self.fs_errors("upload to", remote_path, local=True):
                await sftp.put(local_path, remote_path)

    async def download(self, remote_path: str, local_path: str) -> None:
        """Copy a file from the host to this machine (SFTP)."""
        async with self.link.files() as sftp:
            with self.fs_errors("download", remote_path, local=True):
                await sftp.get(remote_path, local_path)

    # -- run files -----------------------------------------------------------------------
    async def size(self, path: str) -> int | None:
        async with self.link.files() as sftp:
            with self.fs_errors("stat", path):
                try:
                    attrs = await sftp.stat(path)
                except asyncssh.SFTPNoSuchFile:
                    return None
        return attrs.size

    async def read_at(self, path: str, offset: int, size: int) -> bytes | None:
        async with self.link.files() as sftp:
            with self.fs_errors("read", path):
                try:
                    async with sftp.open(path, "rb") as f:
                        data = await f.read(size, offset)
                        assert isinstance(data, bytes)
                        return data
                except asyncssh.SFTPNoSuchFile:
                    return None

    async def read_small(self, path: str) -> bytes | None:
        return await self.read_at(path, 0, 4096)

    async def remove(self, path: str) -> None:
        async with self.link.files() as sftp:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(path)

    async def write_exit_if_missing(self, run_dir: str, code: int) -> None:
        """Record ``code`` unless the wrapper already did (a hard link never replaces)."""
        final = f"{run_dir}/exit"
        tmp = f"{run_dir}/exit.bosun-{uuid.uuid4().hex}.tmp"
        async with self.link.files() as sftp:
            if await sftp.exists(final):
                return
            await self.put(sftp, tmp, f"{code}\n".encode())
            try:
                await sftp.link(tmp, final)
            except asyncssh.SFTPError as exc:
                if isinstance(exc, asyncssh.SFTPConnectionLost | asyncssh.SFTPNoConnection):
                    raise
                # exists: the wrapper won the race, its code is the true one
            finally:
                with contextlib.suppress(asyncssh.SFTPError):
                    await sftp.remove(tmp)


async def close_all(handles: Sequence[asyncssh.SFTPClientFile]) -> None:
    await asyncio.gather(*(h.close() for h in handles), return_exceptions=True)
