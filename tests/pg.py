"""The tests' PostgreSQL server: :mod:`service.throwaway_postgres` (kept importable from here)."""

from service.throwaway_postgres import PostgresServer, free_port, postgres_bin

__all__ = ["PostgresServer", "free_port", "postgres_bin"]
