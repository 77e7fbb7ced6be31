"""``memprog keys create|list|revoke``: the service's API keys (see :mod:`service.auth`).

The keys live in the service database (``database`` in the settings, or ``--database``); a
running service sees a new or revoked key at its next request, no restart needed.

Every command opens an existing database only: a path that names none (a typo, the wrong
working directory for a relative one) is an error naming it, exit status 2, and nothing is
created — not a stray empty database that would then receive keys no service reads.
``keys create --create`` makes a new database (mode 0600) for a service not started yet.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from service.store import db
from service.store.database import is_postgres
from service.store.keys import SCOPES, KeyStore


def add_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (access control)")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--config", default=None, help="TOML settings file (its database)")
    where.add_argument(
        "--database", default=None, help="SQLite file (default: the settings' database)"
    )
    keys_sub = keys.add_subparsers(dest="keys", required=True)

    create = keys_sub.add_parser(
        "create", parents=[where], help="create a key and print it (shown only this once)"
    )
    create.add_argument("--name", required=True, help="whose key it is, e.g. alice")
    create.add_argument(
        "--scope",
        required=True,
        choices=SCOPES,
        help="read: GET endpoints, /read, progress, metrics; program: also pulse, program, "
        "jobs; admin: everything",
    )
    create.add_argument(
        "--create",
        dest="create_database",
        action="store_true",
        help="make the database if it does not exist yet (without this a path that names no "
        "database is an error)",
    )
    create.set_defaults(func=_guarded(_create))

    listing = keys_sub.add_parser("list", parents=[where], help="list the keys (never the keys)")
    listing.set_defaults(func=_guarded(_list))

    revoke = keys_sub.add_parser("revoke", parents=[where], help="revoke a key by its id")
    revoke.add_argument("id", type=int, help="key id (memprog keys list)")
    revoke.set_defaults(func=_guarded(_revoke))


def _store(args: argparse.Namespace) -> KeyStore:
    create = getattr(args, "create_database", False)
    if args.database is not None:
        target = args.database if is_postgres(args.database) else Path(args.database)
        return KeyStore(target, create=create)
    from service.config import load_settings

    settings = load_settings(args.config)
    return KeyStore(settings.database, create=create, station=settings.station)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command``, with a database that is missing or is none refused (exit status 2)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except FileNotFoundError as exc:
            print(
                f"memprog keys {args.keys}: {exc}; nothing was created. Check --database / "
                "--config (a relative path is from the current directory), or make a new "
                "database with `memprog keys create --create ...`",
                file=sys.stderr,
            )
        except db.Error as exc:
            where = args.database if args.database is not None else "the settings' database"
            print(f"memprog keys {args.keys}: {where} is no usable memprog database: {exc}",
                  file=sys.stderr)
        return 2

    return run


def _create(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        key_id, key = store.create(args.name, args.scope)
    except ValueError as exc:
        print(f"memprog keys create: {exc}", file=sys.stderr)
        return 2
    print(
        f"created key {key_id} '{args.name.strip()}' with scope '{args.scope}' in "
        f"{store.db.describe()}; "
        "it is shown only now (only its hash is stored):",
        file=sys.stderr,
    )
    print(key)
    return 0


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _list(args: argparse.Namespace) -> int:
    keys = _store(args).list()
    if not keys:
        print("no keys (create one: memprog keys create --scope program --name NAME)")
        return 0
    print(f"{'id':>4}  {'name':<20} {'scope':<8} {'key starts':<12} {'created':<21} revoked")
    for k in keys:
        print(
            f"{k['id']:>4}  {k['name']:<20} {k['scope']:<8} {k['hint'] + '…':<12} "
            f"{_when(k['created']):<21} {_when(k['revoked'])}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if not _store(args).revoke(args.id):
        print(f"memprog keys revoke: no valid key with id {args.id}", file=sys.stderr)
        return 1
    print(f"revoked key {args.id}")
    return 0
