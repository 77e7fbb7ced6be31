#!/usr/bin/env python3
"""Online backup of the memprog database, safe while the service runs (SQLite backup API).

    python3 deploy/backup.py /var/lib/memprog/memprog.db /srv/backup/memprog-$(date +%F).db

The copy is one consistent snapshot (one read transaction: in WAL mode the service keeps
writing meanwhile), written to a temporary file, checked (``PRAGMA integrity_check``), switched
to a self-contained rollback journal (no -wal/-shm needed beside it) and renamed into place,
so a backup file that exists is complete. Standard library only; prints what it holds.
Never copy the live .db file with cp: without its -wal file the copy lacks recent commits.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path


def backup(source: Path, target: Path) -> dict[str, int]:
    if not source.is_file():
        raise FileNotFoundError(f"no database at {source}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # pages=-1: the whole database in one step, one snapshot
            dst.execute("PRAGMA journal_mode = DELETE")
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise RuntimeError(f"the copy fails its integrity check: {check}")
            tables = [
                r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            counts = {t: dst.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()
    os.replace(partial, target)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("database", type=Path, help="the service's database (MEMPROG_DATABASE)")
    parser.add_argument("target", type=Path, help="the backup file to write")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        counts = backup(args.database, args.target)
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{n} {table}" for table, n in sorted(counts.items()))
    print(f"backed up {args.database} to {args.target} in {time.monotonic() - started:.1f} s: "
          f"{summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
