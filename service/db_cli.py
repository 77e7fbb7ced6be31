"""``memprog db migrate-to postgresql://…``: move a station's SQLite history into the lab's
PostgreSQL store (:mod:`service.store.migrate`): idempotent (a second run copies only what is
new), verified by row counts and SHA-256 checksums per table; exit status 0 when every table
agrees, 1 when one does not, 2 when it could not start.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.store import db
from service.store.database import is_postgres


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("db", help="the store: move a station's SQLite log to PostgreSQL")
    db_sub = parser.add_subparsers(dest="db", required=True)
    move = db_sub.add_parser(
        "migrate-to", help="copy this station's SQLite history into a PostgreSQL database "
        "(idempotent, verified by counts and checksums)")
    move.add_argument("url", help="postgresql://user:password@host:port/database")
    move.add_argument("--config", default=None, help="TOML settings file (its database and "
                      "station)")
    move.add_argument("--database", default=None,
                      help="the SQLite file (default: the settings' database)")
    move.add_argument("--station", default=None,
                      help="the station it is the history of (default: the settings' station)")
    move.add_argument("--json", action="store_true", help="print the report as JSON")
    move.set_defaults(func=_migrate_to)


_FAILS: tuple[type[BaseException], ...] = (*db.Error, OSError, RuntimeError)
"""What stops a migration before its report (MigrationRefused is a RuntimeError)."""


def _migrate_to(args: argparse.Namespace) -> int:
    from service.store.migrate import migrate_to

    if not is_postgres(args.url):
        print(f"memprog db migrate-to: {args.url!r} is not a postgresql:// URL", file=sys.stderr)
        return 2
    source, station = args.database, args.station
    if source is None or station is None:
        from service.config import load_settings

        settings = load_settings(args.config)
        if source is None:
            if is_postgres(settings.database):
                print("memprog db migrate-to: the settings' database is already PostgreSQL; "
                      "name the SQLite file with --database", file=sys.stderr)
                return 2
            source = settings.database
        station = station or settings.station
    if not Path(source).is_file():
        print(f"memprog db migrate-to: no SQLite database at {source}", file=sys.stderr)
        return 2
    try:
        report = migrate_to(Path(source), args.url, station,
                            progress=lambda line: print(line, file=sys.stderr))
    except _FAILS as exc:
        print(f"memprog db migrate-to: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"{report.source} → {report.target} (station {report.station}), "
              f"{report.seconds:.1f} s")
        print(f"{'table':<15}{'source rows':>12}{'copied now':>12}{'target rows':>12}  "
              "sha256 equal")
        for t in report.tables:
            print(f"{t.table:<15}{t.source_rows:>12}{t.copied:>12}{t.target_rows:>12}  "
                  f"{t.source_sha256[:16]}… {'yes' if t.equal else 'NO'}")
        print("verified: every table's rows and checksum agree" if report.verified
              else "NOT verified: a table differs (see above)")
    return 0 if report.verified else 1
