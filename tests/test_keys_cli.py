"""``memprog keys`` opens existing databases only: a typo in a path is an error naming it (exit
2), never a stray empty database that then receives keys nobody's service reads; ``keys create
--create`` makes a new one, private (0600) whatever the umask. ``KeyStore`` (the service's
request path) never creates a file unless asked to."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from service.cli import main
from service.launch import memprog_command
from service.store.keys import KeyStore


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("command", [["list"], ["revoke", "1"],
                                     ["create", "--scope", "read", "--name", "x"]])
def test_a_key_command_on_a_missing_database_fails_and_creates_nothing(tmp_path, capsys,
                                                                       command):
    typo = tmp_path / "x" / "typo.db"
    assert main(["keys", *command, "--database", str(typo)]) == 2
    err = capsys.readouterr().err
    assert str(typo) in err and "--create" in err
    assert tree(tmp_path) == []


def test_the_command_line_itself_exits_2_on_a_typo(tmp_path):
    typo = tmp_path / "x" / "typo.db"
    result = subprocess.run([*memprog_command(), "keys", "list", "--database", str(typo)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and str(typo) in result.stderr
    assert "no keys" not in result.stdout
    assert tree(tmp_path) == []


def test_a_file_that_is_no_database_is_refused(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 100)
    assert main(["keys", "list", "--database", str(notes)]) == 2
    assert str(notes) in capsys.readouterr().err
    assert notes.read_text() == "not a database\n" * 100


def test_create_with_create_makes_a_private_database_whatever_the_umask(tmp_path, capsys):
    database = tmp_path / "new" / "keys.db"
    old = os.umask(0)
    try:
        assert main(["keys", "create", "--create", "--scope", "program", "--name", "alice",
                     "--database", str(database)]) == 0
    finally:
        os.umask(old)
    key = capsys.readouterr().out.strip()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in database.parent.iterdir())
    assert KeyStore(database).verify(key).name == "alice"
    # from now on the database exists: the other commands need no flag
    assert main(["keys", "list", "--database", str(database)]) == 0
    assert "alice" in capsys.readouterr().out


def test_the_key_store_never_creates_a_file_unless_asked(tmp_path):
    missing = tmp_path / "x" / "memprog.db"
    store = KeyStore(missing)
    for call in (lambda: store.verify("mp_nothing"), store.count_valid, store.list):
        with pytest.raises(FileNotFoundError, match=str(missing)):
            call()
    assert tree(tmp_path) == []
    old = os.umask(0)
    try:
        assert KeyStore(missing, create=True).count_valid() == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(missing.stat().st_mode) == 0o600
    assert store.count_valid() == 0  # it exists now
