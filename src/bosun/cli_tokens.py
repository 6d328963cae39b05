"""``bosun token create|list|revoke``: API tokens of the HTTP server.

The secret of a token is printed once, by ``create``; bosun stores only its SHA-256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bosun.config import Settings
from bosun.errors import InputError
from bosun.store import open_store
from bosun.store.base import ApiToken
from bosun.store.sql import SqlStore

__all__ = ["token_app"]

token_app = typer.Typer(
    help="API tokens for the HTTP server (`bosun serve`).", no_args_is_help=True
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="BOSUN_CONFIG", help="Path to bosun.toml."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _settings(config: Path | None, command: str) -> Settings:
    from bosun import cli

    cli.require_local(f"token {command}", "manages the API tokens of the store here")
    return cli._settings(config)


async def _store(settings: Settings) -> SqlStore:
    return await open_store(settings.database_url)


def _capabilities(settings: Settings, text: str | None) -> list[str]:
    known = sorted(settings.agents)
    if text is None:
        return known
    caps = [c.strip() for c in text.split(",") if c.strip()]
    if not caps:
        raise InputError(
            "--capabilities is empty", f"list agent names, e.g. --capabilities {known[0]}"
        )
    unknown = [c for c in caps if c not in settings.agents]
    if unknown:
        raise InputError(
            f"unknown agent(s) in --capabilities: {', '.join(unknown)}",
            f"use agents of bosun.toml: {', '.join(known)}",
        )
    return caps


def _free_name(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


@token_app.command("create")
def create(
    admin: Annotated[bool, typer.Option("--admin", help="A token for everything.")] = False,
    agent: Annotated[
        str | None,
        typer.Option("--agent", metavar="NAME", help="A pull-agent token with this identity."),
    ] = None,
    capabilities: Annotated[
        str | None,
        typer.Option(
            "--capabilities",
            metavar="AGENTS",
            help="Agents it may run, comma-separated (default: every configured agent).",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name to tell it apart.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token and print its secret (shown once, never again)."""
    from bosun import cli

    if admin == (agent is not None):
        cli._fail(
            InputError(
                "say which kind of token to create",
                "pass exactly one of --admin or --agent NAME",
            )
        )
    if admin and capabilities is not None:
        cli._fail(InputError("--capabilities is for agent tokens", "drop it, or use --agent"))
    settings = _settings(config, "create")

    async def go() -> tuple[ApiToken, str]:
        caps = [] if admin else _capabilities(settings, capabilities)
        store = await _store(settings)
        try:
            taken = {t.name for t in await store.list_tokens()}
            chosen = name or _free_name("admin" if admin else str(agent), taken)
            return await store.create_token(
                chosen,
                "admin" if admin else "agent",
                agent=agent,
                capabilities=caps,
            )
        finally:
            await store.aclose()

    token, secret = cli._run(go)
    if as_json:
        cli._print_json({"token": token.to_json(), "secret": secret})
        return
    what = "admin" if token.kind == "admin" else f"agent {token.agent}"
    cli.out.print(f"created {what} token {token.id} ({escape(token.name)}):")
    cli.out.print(secret, markup=False)
    if token.kind == "agent":
        cli.out.print(f"capabilities: {escape(', '.join(token.capabilities))}")
    cli.err.print(
        "this secret is shown once and never again: store it now "
        "(send it as `Authorization: Bearer <secret>`)"
    )


@token_app.command("list")
def list_(
    show_all: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List tokens (their prefixes, never their secrets)."""
    from bosun import cli

    settings = _settings(config, "list")

    async def go() -> list[ApiToken]:
        store = await _store(settings)
        try:
            return await store.list_tokens(include_revoked=show_all)
        finally:
            await store.aclose()

    tokens = cli._run(go)
    if as_json:
        cli._print_json([t.to_json() for t in tokens])
        return
    table = Table()
    for col in ("id", "name", "kind", "agent", "capabilities", "prefix", "created", "last used"):
        table.add_column(col, overflow="fold")
    if show_all:
        table.add_column("revoked")
    for t in tokens:
        row = [
            str(t.id),
            escape(t.name),
            t.kind,
            escape(t.agent or ""),
            escape(", ".join(t.capabilities)),
            t.prefix + "…",
            t.created_at.strftime("%Y-%m-%d %H:%M"),
            t.last_used_at.strftime("%Y-%m-%d %H:%M") if t.last_used_at else "never",
        ]
        if show_all:
            row.append(t.revoked_at.strftime("%Y-%m-%d %H:%M") if t.revoked_at else "")
        table.add_row(*row)
    cli.out.print(table)


@token_app.command("revoke")
def revoke(
    ident: Annotated[str, typer.Argument(metavar="ID|NAME", help="The token's id or name.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: requests with it are refused (401) from now on."""
    from bosun import cli

    settings = _settings(config, "revoke")

    async def go() -> ApiToken:
        store = await _store(settings)
        try:
            return await store.revoke_token(ident)
        finally:
            await store.aclose()

    token = cli._run(go)
    if as_json:
        cli._print_json(token.to_json())
        return
    cli.out.print(f"revoked token {token.id} ({escape(token.name)})")
