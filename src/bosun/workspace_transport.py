"""Commit transport through bosun: for hosts that cannot reach a repository's url.

A host normally fetches and pushes with its own git (``transport = "git"``). When it cannot
reach the url (no route, no credentials there) bosun moves the commits through its own
connection to the host instead, with ``git bundle`` files (``transport = "bosun"``, or
``"auto"``: the host's git first, bosun's connection when that fails):

- **fetch** (preparing a worktree): bosun fetches the url into a mirror of its own on this
  machine (``<state_dir>/transport/repos/<repo>.git``), bundles the commits of origin's
  branches that the host lacks (the host's tips are the bundle's prerequisites, so only
  new history travels), copies the bundle to the host (over SFTP when the provider can,
  else ``Provider.exec`` with the bytes on stdin of ``cat > "$1"``), the host fetches it,
  and then origin's branches in the host's mirror are set exactly to the url's
  (``update-ref --stdin``; gone branches deleted, like ``fetch --prune``);
- **push** (finishing a task): the host bundles the task branch (prerequisites: its
  copies of origin's branches that bosun's mirror has too), bosun copies it here (SFTP,
  or ``base64`` on the host, as ``Provider.exec`` returns text), fetches it into its
  mirror, pushes the branch to the url from there, and records the push in the host's
  mirror (``refs/remotes/origin/<branch>``), so that fail-closed cleanup sees the work
  as pushed.

Every command is an argv list; the only shell text is the constant ``cat > "$1"``.
Bundle files are removed on both sides afterwards; without SFTP a bundle is held in
memory while it travels.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bosun.errors import WorkspaceError

if TYPE_CHECKING:  # workspace imports this module; the types only flow back
    from bosun.workspace import RepoSpec, Workspace

__all__ = ["ORIGIN", "FileTransfer", "Transport"]

#: Where a mirror keeps origin's branches.
ORIGIN = "refs/remotes/origin/"
# Writes stdin to the file "$1" on the host: a constant, the path arrives as an argument.
_WRITE_FILE = 'cat > "$1"'


class Transport:
    """Moves commits between a host's mirror and the url through bosun's own connection.

    ``host`` is the host's workspace; ``local`` a workspace on this machine whose mirrors
    are bosun's own clones of the urls. Callers hold the host repository's lock; this
    class takes the local one.
    """

    def __init__(self, host: Workspace, local: Workspace) -> None:
        self._host = host
        self._local = local

    async def fetch(self, repo: RepoSpec, mirror: str) -> None:
        """Bring origin's branches (as the url has them now) into the host's ``mirror``."""
        host, local = self._host, self._local
        async with local._lock(repo.name):
            await local._ensure_mirror(replace(repo, transport="git"))
            own = local.mirror_path(repo.name)
            wanted = await _refs(local, own, ORIGIN)
            present = await _refs(host, mirror, "refs/")
            have = {ref: sha for ref, sha in present.items() if ref.startswith(ORIGIN)}
            changed = {ref: sha for ref, sha in wanted.items() if have.get(ref) != sha}
            absent = await _missing(host, mirror, changed.values())
            if absent:
                tips = sorted(ref for ref, sha in changed.items() if sha in absent)
                known = await _known(local, own, present.values())
                await self._send(own, tips, known, mirror, f"+{ORIGIN}*:{ORIGIN}*")
            script = [f"update {ref} {sha}" for ref, sha in sorted(changed.items())]
            script += [f"delete {ref}" for ref in sorted(have) if ref not in wanted]
            if script:
                await host._git(
                    mirror,
                    ["update-ref", "--stdin"],
                    stdin=("\n".join(script) + "\n").encode(),
                    what="setting origin's branches from bosun's copy",
                )

    async def push(self, repo: RepoSpec, mirror: str, branch: str) -> None:
        """Push ``branch`` of the host's ``mirror`` to the url, from this machine."""
        host, local = self._host, self._local
        ref = f"refs/heads/{branch}"
        head = await host._git(
            mirror, ["rev-parse", "--verify", f"{ref}^{{commit}}"], what=f"reading {branch}"
        )
        sha = head.stdout.strip()
        async with local._lock(repo.name):
            await local._ensure_mirror(replace(repo, transport="git"))
            own = local.mirror_path(repo.name)
            if await _missing(local, own, [sha]):
                tips = await _refs(host, mirror, ORIGIN)
                known = await _known(local, own, tips.values())
                await self._receive(mirror, ref, known, own, f"+{ref}:{ref}")
            else:
                await local._git(own, ["update-ref", ref, sha], what=f"setting {branch}")
            res = await local._git(
                own, ["push", "-q", "origin", f"{ref}:{ref}"], check=False, network=True, what=""
            )
            if not res.ok:
                raise WorkspaceError(
                    f"pushing {branch} from bosun's copy of {repo.name!r} failed: "
                    f"{_tail(res.stderr)}",
                    hint="check the credentials and network for the repository's url on the "
                    "machine running bosun",
                )
        # What `git push` does for a remote-tracking branch: cleanup sees the work as pushed.
        await host._git(mirror, ["update-ref", f"{ORIGIN}{branch}", sha], what="recording the push")

    # -- bundles -----------------------------------------------------------------------
    async def _send(
        self, own: str, tips: list[str], known: Iterable[str], mirror: str, refspec: str
    ) -> None:
        """Bundle ``tips`` of bosun's mirror ``own`` (without what ``known`` reaches), copy
        the bundle to the host and fetch it into the host's ``mirror``."""
        host = self._host
        local_path = await self._local_file()
        host_path = await self._host_file()
        try:
            await self._local._git(
                own,
                ["bundle", "create", "-q", local_path, "--stdin"],
                stdin=_rev_args(tips, known),
                what="bundling commits for the host",
            )
            provider = host._provider
            if isinstance(provider, FileTransfer):
                await provider.upload(local_path, host_path)
            else:
                await host._run(
                    ["sh", "-c", _WRITE_FILE, "sh", host_path],
                    stdin=await asyncio.to_thread(_read_bytes, local_path),
                    limit=host._network_timeout,
                    what="uploading a bundle to the host",
                )
            await host._git(mirror, ["fetch", "-q", host_path, refspec], what="fetching the bundle")
        finally:
            await asyncio.to_thread(_unlink, local_path)
            await host._run(["rm", "-f", "--", host_path], check=False, what="")

    async def _receive(
        self, mirror: str, ref: str, known: Iterable[str], own: str, refspec: str
    ) -> None:
        """Bundle ``ref`` of the host's ``mirror`` (without what ``known`` reaches), copy the
        bundle here and fetch it into bosun's mirror ``own``."""
        host = self._host
        local_path = await self._local_file()
        host_path = await self._host_file()
        try:
            await host._git(
                mirror,
                ["bundle", "create", "-q", host_path, "--stdin"],
                stdin=_rev_args([ref], known),
                what="bundling the task branch on the host",
            )
            provider = host._provider
            if isinstance(provider, FileTransfer):
                await provider.download(host_path, local_path)
            else:
                # exec returns text: the bytes travel as base64
                res = await host._run(
                    ["base64", host_path],
                    limit=host._network_timeout,
                    what="downloading the bundle",
                )
                await asyncio.to_thread(_write_bytes, local_path, _decode(res.stdout))
            await self._local._git(
                own, ["fetch", "-q", local_path, refspec], what="fetching the host's bundle"
            )
        finally:
            await asyncio.to_thread(_unlink, local_path)
            await host._run(["rm", "-f", "--", host_path], check=False, what="")

    async def _host_file(self) -> str:
        folder = posixpath.join(self._host._root, "bundles")
        await self._host._provider.makedirs(folder)
        return posixpath.join(folder, f"{uuid.uuid4().hex}.bundle")

    async def _local_file(self) -> str:
        folder = posixpath.join(self._local._root, "bundles")
        await self._local._provider.makedirs(folder)
        return posixpath.join(folder, f"{uuid.uuid4().hex}.bundle")


@runtime_checkable
class FileTransfer(Protocol):
    """A provider that copies files itself (the SSH provider, over SFTP): bundles then
    travel as files instead of through ``exec``."""

    async def upload(self, local_path: str, remote_path: str) -> None: ...

    async def download(self, remote_path: str, local_path: str) -> None: ...


def _decode(text: str) -> bytes:
    try:
        return base64.b64decode(text)
    except (binascii.Error, ValueError) as exc:
        raise WorkspaceError(
            f"the bundle downloaded from the host is not valid base64 ({exc})",
            hint="check that the host's base64 is GNU coreutils or busybox",
        ) from exc


async def _refs(ws: Workspace, mirror: str, prefix: str) -> dict[str, str]:
    """``{refname: sha}`` under ``prefix`` (symbolic refs such as ``origin/HEAD`` left out)."""
    res = await ws._git(
        mirror,
        ["for-each-ref", "--format=%(objectname) %(refname) %(symref)", prefix],
        what="listing branches",
    )
    refs = {}
    for line in res.stdout.splitlines():
        sha, _, rest = line.partition(" ")
        name, _, symref = rest.partition(" ")
        if name and not symref:
            refs[name] = sha
    return refs


async def _missing(ws: Workspace, mirror: str, shas: Iterable[str]) -> set[str]:
    """Which of ``shas`` the repository ``mirror`` does not have."""
    unique = sorted(set(shas))
    if not unique:
        return set()
    res = await ws._git(
        mirror,
        ["cat-file", "--batch-check=%(objectname)"],
        stdin=("\n".join(unique) + "\n").encode(),
        what="checking which commits are there",
    )
    return {line.split()[0] for line in res.stdout.splitlines() if line.endswith(" missing")}


async def _known(ws: Workspace, mirror: str, shas: Iterable[str]) -> set[str]:
    """Which of ``shas`` the repository ``mirror`` has (usable as bundle prerequisites)."""
    unique = set(shas)
    return unique - await _missing(ws, mirror, unique)


def _rev_args(tips: Iterable[str], known: Iterable[str]) -> bytes:
    """``git bundle create --stdin`` input: the refs to carry, ``^sha`` for known history."""
    lines = [*tips, *(f"^{sha}" for sha in sorted(known))]
    return ("\n".join(lines) + "\n").encode()


def _tail(text: str) -> str:
    from bosun.workspace import _tail as tail  # a late import: workspace imports this module

    return tail(text)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
