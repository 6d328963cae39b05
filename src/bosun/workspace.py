"""Git workspaces for tasks: a mirror per repository, a worktree and branch per task.

Every file-system and git operation is a command run through ``Provider.exec`` (argv
lists, never shell strings built from task data), so the same code prepares worktrees on
this machine and on SSH hosts. Layout under ``root``::

    repos/<name>.git          bare mirror; origin's branches in refs/remotes/origin/*
    worktrees/<id>-<slug>     one worktree per task, on branch task/<id>-<slug>
    scratch/task-<id>         an empty directory for tasks without a repository

The mirror keeps origin's branches as remote-tracking refs (``+refs/heads/*:
refs/remotes/origin/*``), not in ``refs/heads``: a ``fetch --prune`` into ``refs/heads``
would delete unpushed task branches and fail on branches checked out in worktrees.
Cleanup is fail-closed: a worktree with uncommitted or unpushed work is never removed.

Commits travel between the mirror and the repository's url with the host's own git, or,
for a host that cannot reach the url, through bosun's connection to the host as git
bundles (``RepoSpec.transport``; see :mod:`bosun.workspace_transport`).
"""

from __future__ import annotations

import asyncio
import posixpath
import re
import shlex
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from bosun.errors import ConfigError, ProviderError, WorkspaceError
from bosun.providers.base import ExecResult, Provider
from bosun.providers.local import LocalProvider
from bosun.workspace_transport import Transport

SLUG_MAX = 40
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")
# No credential prompt may ever block a headless fetch or push.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0"}
_IDENTITY = {"user.name": "bosun", "user.email": "bosun@localhost"}
#: Values of ``RepoSpec.transport`` (see bosun.workspace_transport).
TRANSPORTS = ("auto", "git", "bosun")
#: A push that reached the url and was refused: pushing it through bosun would not help.
_REJECTED = re.compile(r"\[(remote )?rejected\]|non-fast-forward|fetch first|hook declined")
# Appends a line to a file unless present; a constant, the data arrive as "$1" and "$2".
_APPEND_ONCE = 'grep -qxF -- "$1" "$2" 2>/dev/null || printf "%s\\n" "$1" >>"$2"'


def slugify(title: str) -> str:
    """A short ``[a-z0-9-]`` form of ``title``, at most 40 characters, never empty."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
    return slug[:SLUG_MAX].rstrip("-") or "task"


def branch_name(task_id: int, title: str) -> str:
    """The task's branch, ``task/<id>-<slug>``: always a valid git branch name."""
    return f"task/{task_id}-{slugify(title)}"


def _redact(text: str) -> str:
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def _tail(text: str, lines: int = 15) -> str:
    return _redact("\n".join(text.strip().splitlines()[-lines:]))


@dataclass(frozen=True, slots=True)
class RepoSpec:
    """A repository tasks work on, as configured in bosun.toml."""

    name: str
    url: str
    default_branch: str = "main"
    copy_files: tuple[str, ...] = ()  # relative to the dir holding bosun.toml; never committed
    setup: tuple[str, ...] | None = None  # argv run in each fresh worktree
    push: bool = True
    #: how commits travel between the host and the url: "auto" (the host's git, and
    #: bosun's own connection when the host cannot reach the url), "git" or "bosun"
    transport: str = "auto"

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"invalid repository name {self.name!r}",
                hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
            )
        if not self.url.strip():
            raise ConfigError(f"repository {self.name!r} has an empty url", hint="set its url")
        if not self.default_branch.strip() or self.default_branch.startswith("-"):
            raise ConfigError(
                f"repository {self.name!r} has an invalid default_branch {self.default_branch!r}",
                hint="set default_branch to the name of an existing branch, e.g. main",
            )
        if self.transport not in TRANSPORTS:
            raise ConfigError(
                f"repository {self.name!r} has an unknown transport {self.transport!r}",
                'use transport = "auto", "git" or "bosun"',
            )
        for rel in self.copy_files:
            _check_relative(rel, self.name)
        if self.setup is not None and not self.setup:
            raise ConfigError(
                f"repository {self.name!r} has an empty setup command",
                hint="give setup as an argv list, e.g. ['npm', 'ci'], or leave it out",
            )


@dataclass(frozen=True, slots=True)
class Worktree:
    """Where a task works. ``branch``/``base_sha``/``repo`` are None for a scratch dir."""

    path: str
    branch: str | None
    base_sha: str | None
    repo: str | None


def _check_relative(rel: str, repo: str) -> None:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\0" in rel or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(
            f"copy_files entry {rel!r} of repository {repo!r} is not a plain relative path",
            hint="list paths relative to the directory of bosun.toml, without '..' or a "
            "leading '/'",
        )


def _exclude_pattern(rel: str) -> str:
    """An anchored gitignore pattern matching exactly ``rel``."""
    escaped = re.sub(r"([\\*?\[!#])", r"\\\1", rel)
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return "/" + escaped


class Workspace:
    """Prepares, finishes and cleans task worktrees under ``root`` via a provider."""

    def __init__(
        self,
        provider: Provider,
        root: str,
        *,
        git_timeout: float = 120.0,
        network_timeout: float = 600.0,
        setup_timeout: float = 3600.0,
        local_root: str | None = None,
        local_provider: Provider | None = None,
    ) -> None:
        """``local_root`` (default: ``root``) is bosun's state directory on this machine and
        ``local_provider`` (default: a LocalProvider) runs git here: both are used only
        when commits travel through bosun (see :mod:`bosun.workspace_transport`)."""
        if not posixpath.isabs(root):
            raise WorkspaceError(
                f"workspace root {root!r} is not an absolute path",
                hint="configure bosun's state directory as an absolute path",
            )
        self._provider = provider
        self._root = posixpath.normpath(root)
        self._git_timeout = git_timeout
        self._network_timeout = network_timeout
        self._setup_timeout = setup_timeout
        # Mirror operations of one repository are serialized within this process; git's
        # own lock files (and the atomic clone rename) cover other processes.
        self._locks: dict[str, asyncio.Lock] = {}
        self._local_root = posixpath.normpath(local_root) if local_root else self._root
        self._local_provider = local_provider
        self._transport: Transport | None = None
        # transport = "auto": repositories whose url this host could not reach (until
        # bosun restarts), so that a slow network failure is not waited for every time
        self._fetch_via_bosun: set[str] = set()
        self._push_via_bosun: set[str] = set()

    def mirror_path(self, repo: str) -> str:
        """The bare mirror of repository ``repo``."""
        return posixpath.join(self._root, "repos", f"{repo}.git")

    def worktree_path(self, task_id: int, title: str) -> str:
        """The worktree of a task; always directly inside ``root/worktrees``."""
        return posixpath.join(self._root, "worktrees", f"{task_id}-{slugify(title)}")

    def scratch_path(self, task_id: int) -> str:
        """The scratch directory of a task without a repository."""
        return posixpath.join(self._root, "scratch", f"task-{task_id}")

    async def prepare(
        self,
        task_id: int,
        title: str,
        repo: RepoSpec | None,
        base_branch: str | None = None,
        source_dir: str | None = None,
        *,
        create_scratch: bool = True,
    ) -> Worktree:
        """A worktree on ``task/<id>-<slug>`` from the base branch (reused on retry).

        Without a repository: the task's scratch directory, created unless
        ``create_scratch`` is False (the launch creates it then: ``Command.make_cwd``)."""
        if task_id < 0:
            raise WorkspaceError(f"invalid task id {task_id}", hint="task ids are >= 0")
        if repo is None:
            path = self.scratch_path(task_id)
            if create_scratch:
                await self._provider.makedirs(path)
            return Worktree(path, None, None, None)
        if repo.copy_files and source_dir is None:
            raise WorkspaceError(
                f"repository {repo.name!r} lists copy_files but no source directory was given",
                hint="pass the directory holding bosun.toml as source_dir",
            )
        base = base_branch or repo.default_branch
        branch = branch_name(task_id, title)
        path = self.worktree_path(task_id, title)
        mirror = self.mirror_path(repo.name)
        async with self._lock(repo.name):
            await self._ensure_mirror(repo)
            if await self._exists(path):
                return await self._reuse(repo, path, branch, base)
            base_sha = await self._resolve_base(repo, base)
            await self._git(mirror, ["worktree", "prune"], what="pruning stale worktrees")
            created_branch = not await self._ref_exists(mirror, f"refs/heads/{branch}")
            if created_branch:
                add = ["worktree", "add", "-q", "-b", branch, "--", path, base_sha]
            else:
                # The branch survived a removed worktree (rework after cleanup): keep it.
                add = ["worktree", "add", "-q", "--", path, branch]
            await self._git(mirror, add, what=f"creating worktree {path}")
            if not created_branch:
                base_sha = await self._merge_base(path, base_sha)
            await self._exclude(mirror, repo.copy_files)
        try:
            await self._copy_files(repo, source_dir, path)
            if repo.setup is not None:
                await self._setup(repo.setup, path)
        except BaseException:
            # A fresh worktree holds no work yet: remove it so that a retry starts clean.
            async with self._lock(repo.name):
                await self._git(
                    mirror, ["worktree", "remove", "--force", path], check=False, what="undo"
                )
                if created_branch:
                    await self._git(mirror, ["branch", "-D", branch], check=False, what="undo")
            raise
        return Worktree(path, branch, base_sha, repo.name)

    async def finish(self, wt: Worktree, *, task_id: int, title: str, push: bool) -> list[str]:
        """Commit leftovers, push if asked; the task's commit SHAs, oldest first."""
        if wt.branch is None or wt.repo is None or wt.base_sha is None:
            return []
        head = await self._git(wt.path, ["symbolic-ref", "-q", "HEAD"], check=False, what="")
        if head.stdout.strip() != f"refs/heads/{wt.branch}":
            raise WorkspaceError(
                f"worktree {wt.path} is not on its branch {wt.branch} "
                f"(HEAD: {head.stdout.strip() or 'detached'})",
                hint=f"check out {wt.branch} in the worktree (finish any rebase) and retry",
            )
        await self._git(wt.path, ["add", "-A"], what="staging the task's changes")
        staged = await self._git(wt.path, ["diff", "--cached", "--quiet"], check=False, what="")
        if staged.exit_code not in (0, 1):
            raise WorkspaceError(
                f"git diff failed in {wt.path}: {_tail(staged.stderr)}",
                hint="check the worktree with git status",
            )
        if staged.exit_code == 1:
            first = title.strip().splitlines()[0] if title.strip() else "(untitled)"
            message = f"bosun: task #{task_id}: {first}\n"
            argv = [*await self._identity(wt.path), "commit", "-q", "-F", "-"]
            await self._git(
                wt.path, argv, stdin=message.encode(), what="committing the task's changes"
            )
        listed = await self._git(
            wt.path, ["rev-list", "--reverse", f"{wt.base_sha}..HEAD"], what="listing commits"
        )
        commits = listed.stdout.split()
        if push and commits:
            async with self._lock(wt.repo):
                await self._push(wt)
        return commits

    async def dirty(self, wt: Worktree) -> bool:
        """Whether the worktree has uncommitted changes (a scratch dir: is not empty)."""
        if wt.branch is None:
            listing = await self._run(["ls", "-A", "--", wt.path], check=False, what="")
            return listing.ok and bool(listing.stdout.strip())
        status = await self._git(
            wt.path,
            ["status", "--porcelain", "--untracked-files=all"],
            what=f"checking {wt.path} for changes",
        )
        return bool(status.stdout.strip())

    async def unpushed(self, wt: Worktree) -> bool:
        """Whether HEAD is on no branch of origin (as last fetched or pushed)."""
        if wt.branch is None:
            return False
        res = await self._git(
            wt.path,
            ["for-each-ref", "--contains", "HEAD", "--format=%(refname)", "refs/remotes/origin"],
            what=f"checking whether {wt.path} was pushed",
        )
        return not res.stdout.strip()

    async def cleanup(self, wt: Worktree, *, push: bool = True) -> bool:
        """Remove the worktree if nothing would be lost; False (kept) otherwise.

        Uncommitted work always keeps it; unpushed commits keep it when the repository
        pushes (``push``). The branch itself is never deleted. A scratch dir is removed
        only when empty.
        """
        if not await self._exists(wt.path):
            if wt.repo is not None:
                await self._git(
                    self.mirror_path(wt.repo), ["worktree", "prune"], check=False, what=""
                )
            return True
        if wt.repo is None or wt.branch is None:
            return (await self._run(["rmdir", "--", wt.path], check=False, what="")).ok
        if await self.dirty(wt) or (push and await self.unpushed(wt)):
            return False
        async with self._lock(wt.repo):
            # No --force: git itself refuses again if something changed meanwhile.
            res = await self._git(
                self.mirror_path(wt.repo), ["worktree", "remove", wt.path], check=False, what=""
            )
        return res.ok

    # -- internals ---------------------------------------------------------------------

    def _lock(self, repo: str) -> asyncio.Lock:
        return self._locks.setdefault(repo, asyncio.Lock())

    async def _run(
        self,
        argv: Sequence[str],
        *,
        what: str,
        cwd: str | None = None,
        stdin: bytes | None = None,
        check: bool = True,
        limit: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        res = await self._provider.exec(
            argv, cwd=cwd, env=env, stdin=stdin, timeout=limit or self._git_timeout
        )
        if check and not res.ok:
            raise WorkspaceError(
                f"{what} failed: {_redact(shlex.join(argv))} exited {res.exit_code}: "
                f"{_tail(res.stderr)}",
                hint="see git's message above; fix the repository or the workspace directory",
            )
        return res

    async def _git(
        self,
        repo_dir: str,
        args: Sequence[str],
        *,
        what: str,
        stdin: bytes | None = None,
        check: bool = True,
        network: bool = False,
    ) -> ExecResult:
        return await self._run(
            ["git", "-C", repo_dir, *args],
            what=what,
            stdin=stdin,
            check=check,
            limit=self._network_timeout if network else self._git_timeout,
            env=_GIT_ENV,
        )

    async def _exists(self, path: str) -> bool:
        return (await self._run(["test", "-e", path], check=False, what="")).ok

    async def _ref_exists(self, repo_dir: str, ref: str) -> bool:
        res = await self._git(
            repo_dir,
            ["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            check=False,
            what="",
        )
        return res.ok

    async def _ensure_mirror(self, repo: RepoSpec) -> None:
        mirror = self.mirror_path(repo.name)
        if not await self._exists(mirror):
            await self._clone(repo, mirror)
            return
        url, transport = await self._origin(mirror)
        if url != repo.url:
            await self._git(
                mirror, ["remote", "set-url", "origin", "--", repo.url], what="updating origin"
            )
        if transport != repo.transport:
            await self._set_transport(mirror, repo.transport)
        await self._sync(repo, mirror)

    async def _clone(self, repo: RepoSpec, mirror: str) -> None:
        # Built aside and renamed into place, so nobody ever sees a half-made mirror.
        repos = posixpath.dirname(mirror)
        tmp = posixpath.join(repos, f".{repo.name}.git.tmp-{uuid.uuid4().hex[:12]}")
        await self._run(["mkdir", "-p", "--", repos], what="creating the repos dir")
        try:
            await self._run(["git", "init", "-q", "--bare", tmp], what="creating the mirror")
            # After "--" the url is never an option, whatever it starts with.
            await self._git(tmp, ["remote", "add", "origin", "--", repo.url], what="adding origin")
            await self._set_transport(tmp, repo.transport)
            await self._sync(repo, tmp)
            await self._run(["mv", "--", tmp, mirror], what="moving the mirror into place")
        except BaseException:
            await self._run(["rm", "-rf", "--", tmp], check=False, what="")
            raise
        # Another bosun made the mirror meanwhile: mv then put ours inside it. Drop ours.
        nested = posixpath.join(mirror, posixpath.basename(tmp))
        await self._run(["rm", "-rf", "--", nested], check=False, what="")

    async def _origin(self, mirror: str) -> tuple[str, str]:
        """The mirror's origin url and its transport (one git command: a hot path)."""
        keys = r"^(remote\.origin\.url|bosun\.transport)$"
        res = await self._git(mirror, ["config", "--get-regexp", keys], check=False, what="")
        found = dict(line.partition(" ")[::2] for line in res.stdout.splitlines())
        return found.get("remote.origin.url", ""), found.get("bosun.transport", "auto")

    async def _set_transport(self, mirror: str, transport: str) -> None:
        # Kept in the mirror so that a finish after a restart still knows it.
        await self._git(
            mirror, ["config", "bosun.transport", transport], what="recording the transport"
        )

    def _bosun(self) -> Transport:
        if self._transport is None:
            local = self._local_provider or LocalProvider("bosun", self._local_root)
            orchestrator = Workspace(
                local,
                posixpath.join(self._local_root, "transport"),
                git_timeout=self._git_timeout,
                network_timeout=self._network_timeout,
            )
            self._transport = Transport(self, orchestrator)
        return self._transport

    async def _sync(self, repo: RepoSpec, repo_dir: str) -> None:
        """origin's branches into ``repo_dir``: the host's git, or bosun's connection."""
        if repo.transport == "bosun" or repo.name in self._fetch_via_bosun:
            await self._bosun().fetch(repo, repo_dir)
            return
        try:
            await self._fetch(repo, repo_dir)
        except (WorkspaceError, ProviderError) as exc:
            if repo.transport != "auto":
                raise
            try:
                await self._bosun().fetch(repo, repo_dir)
            except (WorkspaceError, ProviderError) as second:
                raise WorkspaceError(
                    f"{exc.message}; moving the commits through bosun failed too: {second.message}",
                    hint=second.hint,
                ) from second
            self._fetch_via_bosun.add(repo.name)

    async def _push(self, wt: Worktree) -> None:
        """Push the task branch: with the host's git, or through bosun (see _sync)."""
        assert wt.repo is not None and wt.branch is not None
        mirror = self.mirror_path(wt.repo)
        url, transport = await self._origin(mirror)
        repo = RepoSpec(name=wt.repo, url=url or "-", transport=transport)
        if transport == "bosun" or wt.repo in self._push_via_bosun | self._fetch_via_bosun:
            await self._bosun().push(repo, mirror, wt.branch)
            return
        ref = f"refs/heads/{wt.branch}"
        res = await self._git(
            mirror, ["push", "-q", "origin", f"{ref}:{ref}"], check=False, network=True, what=""
        )
        if res.ok:
            return
        failed = WorkspaceError(
            f"pushing {wt.branch} of repository {wt.repo!r} failed: {_tail(res.stderr)}",
            hint="check the credentials and network for the repository's url; the "
            f"commits stay on branch {wt.branch} in {wt.path}",
        )
        if transport != "auto" or _REJECTED.search(res.stderr):
            raise failed  # the url was reached and said no: bosun would hear the same
        try:
            await self._bosun().push(repo, mirror, wt.branch)
        except (WorkspaceError, ProviderError) as second:
            raise WorkspaceError(
                f"{failed.message}; pushing through bosun failed too: {second.message}",
                hint=f"{second.hint}; the commits stay on branch {wt.branch} in {wt.path}",
            ) from second
        self._push_via_bosun.add(wt.repo)

    async def _fetch(self, repo: RepoSpec, repo_dir: str) -> None:
        res = await self._git(
            repo_dir, ["fetch", "-q", "--prune", "origin"], check=False, network=True, what=""
        )
        if not res.ok and ".lock" in res.stderr:
            # Another process held a ref lock for a moment: retry once.
            await asyncio.sleep(0.5)
            res = await self._git(
                repo_dir,
                ["fetch", "-q", "--prune", "origin"],
                check=False,
                network=True,
                what="",
            )
        if not res.ok:
            raise WorkspaceError(
                f"cannot fetch repository {repo.name!r} from {_redact(repo.url)}: "
                f"{_tail(res.stderr)}",
                hint="check the url in bosun.toml, the network and the credentials",
            )

    async def _resolve_base(self, repo: RepoSpec, base: str) -> str:
        mirror = self.mirror_path(repo.name)
        # origin's branch first; then a local branch (e.g. another task's, for stacking).
        for ref in (f"refs/remotes/origin/{base}", f"refs/heads/{base}"):
            res = await self._git(
                mirror,
                ["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                check=False,
                what="",
            )
            if res.ok:
                return res.stdout.strip()
        listed = await self._git(
            mirror,
            ["for-each-ref", "--format=%(refname:lstrip=3)", "refs/remotes/origin"],
            what="listing branches",
        )
        names = [n for n in listed.stdout.split() if n != "HEAD"]
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise WorkspaceError(
            f"base branch {base!r} does not exist in repository {repo.name!r} "
            f"({_redact(repo.url)})",
            hint=f"use one of its branches ({shown or 'none: the repository is empty'}); "
            "set default_branch in bosun.toml or the task's base branch",
        )

    async def _reuse(self, repo: RepoSpec, path: str, branch: str, base: str) -> Worktree:
        # A retry or rework: the worktree is kept as is so that no work is lost.
        args = ["rev-parse", "--path-format=absolute", "--git-common-dir"]
        common = await self._git(path, args, check=False, what="")
        # Asked of git on both sides so that symlinks in root compare equal.
        mirror = await self._git(self.mirror_path(repo.name), args, check=False, what="")
        if not common.ok or common.stdout.strip() != mirror.stdout.strip():
            raise WorkspaceError(
                f"{path} exists but is not a worktree of repository {repo.name!r}",
                hint=f"move or delete {path} (check it for work first), then retry",
            )
        base_sha = await self._merge_base(path, await self._resolve_base(repo, base))
        return Worktree(path, branch, base_sha, repo.name)

    async def _merge_base(self, path: str, base_sha: str) -> str:
        res = await self._git(path, ["merge-base", "HEAD", base_sha], check=False, what="")
        # Unrelated histories: count from the base itself rather than fail.
        return res.stdout.strip() if res.ok else base_sha

    async def _identity(self, path: str) -> list[str]:
        """``-c`` options for the identity keys the repository's config lacks."""
        args: list[str] = []
        for key, value in _IDENTITY.items():
            got = await self._git(path, ["config", key], check=False, what="")
            if not got.stdout.strip():
                args += ["-c", f"{key}={value}"]
        return args

    async def _exclude(self, mirror: str, copy_files: Sequence[str]) -> None:
        # Copied files (.env and the like) must never be committed by ``add -A``.
        if not copy_files:
            return
        info = posixpath.join(mirror, "info")
        await self._run(["mkdir", "-p", "--", info], what="creating info/")
        exclude = posixpath.join(info, "exclude")
        for rel in copy_files:
            await self._run(
                ["sh", "-c", _APPEND_ONCE, "sh", _exclude_pattern(rel), exclude],
                what=f"excluding {rel} from commits",
            )

    async def _copy_files(self, repo: RepoSpec, source_dir: str | None, path: str) -> None:
        if not repo.copy_files or source_dir is None:
            return
        for rel in repo.copy_files:
            src = posixpath.join(source_dir, rel)
            dst = posixpath.join(path, rel)
            if (await self._run(["test", "-d", src], check=False, what="")).ok:
                await self._run(["mkdir", "-p", "--", dst], what=f"copying {rel}")
                await self._run(["cp", "-RPp", "--", f"{src}/.", dst], what=f"copying {rel}")
            elif await self._exists(src):
                parent = posixpath.dirname(dst)
                await self._run(["mkdir", "-p", "--", parent], what=f"copying {rel}")
                await self._run(["cp", "-p", "--", src, dst], what=f"copying {rel}")
            else:
                raise WorkspaceError(
                    f"copy_files entry {rel!r} of repository {repo.name!r} does not exist "
                    f"in {source_dir}",
                    hint="create the file or remove it from copy_files in bosun.toml",
                )

    async def _setup(self, setup: Sequence[str], path: str) -> None:
        res = await self._provider.exec(setup, cwd=path, timeout=self._setup_timeout)
        if not res.ok:
            raise WorkspaceError(
                f"setup command {shlex.join(setup)} failed with exit {res.exit_code} in "
                f"{path}: {_tail(res.stderr or res.stdout)}",
                hint="fix the setup command in bosun.toml or the repository, then retry",
            )
