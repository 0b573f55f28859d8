"""The PostgreSQL server the tests use: AWEBER_TEST_POSTGRES_URL, by default loopback, user postgres, trust."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

PG_SERVER_URL = os.environ.get("AWEBER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def with_dbname(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))
