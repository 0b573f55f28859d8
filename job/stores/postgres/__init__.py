"""Connections in a shared PostgreSQL database: one token pair and task state per customer, many machines.

A *connection* is one row of ``aweber_job.connections``. The file store's lock becomes a **lease**
(``lease_holder``, ``lease_until``, database time) claimed in one committed ``UPDATE … RETURNING``, and
every write a run makes is **fenced**: ``WHERE fence = <the fence of my claim> AND lease_holder = me``.
A run whose lease ran out and was taken over therefore can never overwrite the newer tokens of the run
that took it: its save is refused and its tokens go to a **rescue file** in its own state directory,
which the next run of that connection on that machine puts in place when they follow the stored refresh
token. Before a refresh token is spent, ``refreshing_from`` records its hash (the **marker**); a run that
finds the marker still naming the stored token knows an earlier run died mid-refresh and says so.

Tokens are stored as the token file's bytes, encrypted with ``MultiFernet`` when keys are given and
then bound to their connection, so ciphertext copied into another row opens for no one.
psycopg and cryptography are imported here only, and only when a store is made: a token-file
install never loads them. The database URL's password is a secret: it is registered with the
redactor, and messages describe the store as the URL without it. See docs/design.md, "The PostgreSQL
store".
"""

from job.stores.postgres.common import (
    RESCUE_DIRECTORY,
    SCHEMA,
    SCHEMA_VERSION,
    ConnectionInfo,
    ConnectionView,
    PendingRefresh,
    check_name,
    file_safe,
)
from job.stores.postgres.connection import PostgresConnection
from job.stores.postgres.store import PostgresStore, StateToImport

__all__ = [
    "RESCUE_DIRECTORY",
    "SCHEMA",
    "SCHEMA_VERSION",
    "ConnectionInfo",
    "ConnectionView",
    "PendingRefresh",
    "PostgresConnection",
    "PostgresStore",
    "StateToImport",
    "check_name",
    "file_safe",
]
