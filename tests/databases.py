"""A fresh PostgreSQL database on the machine's own server (127.0.0.1:5432, trust auth), for the
production-mode tests; the default everywhere else stays SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """Create a database named ``<prefix>_<random>``, yield its name, drop it (even when in use).

    Skips the test when psycopg2 or the server is missing.
    """
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    except psycopg2.OperationalError as error:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {error}")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def url_of(name: str) -> str:
    """The SQLAlchemy URL of a database made by :func:`fresh_database`."""
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
