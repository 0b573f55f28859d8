"""Encryption of the stored tokens: the Fernet keys, sealing a value bound to its connection and opening it,
why a value does not open (damaged, or sealed with a key not given), ``check_keys`` and ``store rotate-key``."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from job.auth.tokens import TokenFile, fingerprint, parse_token_file
from job.errors import ConfigError, JobError, StoreKeyError
from job.logs import REDACTOR
from job.stores.postgres.common import BOUND, binding, fernet_damage
from job.stores.postgres.database import Database
from job.stores.postgres.schema import Schema
from job.stores.postgres.sql import load
from job.stores.postgres.watchdog import WATCHDOG

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

log = logging.getLogger(__name__)

# 9999-12-31T23:59:59Z: a later expiry (a hand-edited file) cannot go in a timestamptz column as a time.
LAST_TIMESTAMP = 253_402_300_799.0

# How many of the most recently updated encrypted rows check_keys (and the diagnosis of a value that fails
# its check) look at: enough to see past a damaged row or two, few enough to cost nothing.
ROWS_TO_TRY = 5
# What a sealed_with column may hold (a key fingerprint); anything else, written by hand, is ignored.
KEY_FINGERPRINT = re.compile(r"[0-9a-f]{8}")


class Crypto:
    """The store keys (none: values are stored plain) and everything done with them to the rows of one store."""

    def __init__(self, keys: Sequence[str], database: Database, schema: Schema) -> None:
        self._database = database
        self._schema = schema
        self._keys = [key.strip() for key in keys if key and key.strip()]
        REDACTOR.add(*self._keys)
        self._fingerprints = [fingerprint(key) for key in self._keys]
        self._multi = self._make_fernet()

    @property
    def description(self) -> str:
        """The store as messages name it (its URL without the password)."""
        return self._database.description

    @property
    def encrypts(self) -> bool:
        """Whether tokens are sealed with a key (at least one store key is given)."""
        return bool(self._keys)

    def _make_fernet(self) -> MultiFernet | None:
        if not self._keys:
            return None
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError:
            raise ConfigError(
                ["a store key is set but cryptography is not installed: pip install 'aweber-job[postgres]'"]
            ) from None
        fernets = []
        for number, key in enumerate(self._keys, 1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise ConfigError([
                    f"store key #{number} (fingerprint {fingerprint(key)}) is not a Fernet key: 32 url-safe "
                    "base64-encoded bytes; make one with: python3 -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'"
                ]) from None
        return MultiFernet(fernets)

    def seal(self, name: str, tokens: TokenFile) -> dict[str, Any]:
        """The columns that hold ``tokens`` of connection ``name``: bound to it and encrypted with keys[0]
        when keys are given, else plain."""
        content = tokens.to_bytes()
        REDACTOR.add(*tokens.secrets())
        account = tokens.document.get("account_id")
        expires_at = tokens.expires_at
        return {
            "tokens": self.sealed(name, content) if self._multi is not None else content,
            "encrypted": self._multi is not None,
            "sealed_with": self._fingerprints[0] if self._multi is not None else None,
            # The plain columns only inform `list`: a value a column cannot hold is left out, never refused.
            "expires_at": expires_at if expires_at is not None and 0 <= expires_at < LAST_TIMESTAMP else None,
            "account_id": account if isinstance(account, int) and not isinstance(account, bool)
            and 0 < account < 2**63 else None,
        }

    def sealed(self, name: str, content: bytes) -> bytes:
        """``content`` (a token file) bound to connection ``name`` and encrypted with the first key."""
        assert self._multi is not None
        return self._multi.encrypt(binding(name) + content)

    def unseal(self, name: str, data: bytes, encrypted: bool) -> TokenFile:
        """Open (see :meth:`opened`) and parse; whatever is wrong names the connection."""
        tokens = parse_token_file(self.opened(name, bytes(data), encrypted), f"connection '{name}' in the store")
        REDACTOR.add(*tokens.secrets())
        return tokens

    def opened(self, name: str, data: bytes, encrypted: bool, *, rotating: bool = False) -> bytes:
        """The token file a row holds, once it is proven to be this connection's.

        With keys, only a value sealed for this connection opens; a plain row, or ciphertext not bound to
        any connection, only while the store still accepts legacy values (then with a warning), and a
        plain row also when ``rotating`` (``store rotate-key`` is how a store gets encrypted).
        """
        where = f"connection '{name}' in the store {self.description}"
        if not encrypted:
            if self._multi is not None and not rotating:
                self._legacy(name, "is stored unencrypted although a store key is set", plain=True)
            return data
        if self._multi is None:
            raise StoreKeyError([f"{where} is encrypted but no store key is given (AWEBER_STORE_KEY)"])
        from cryptography.fernet import InvalidToken

        try:
            content = self._multi.decrypt(data)
        except InvalidToken:
            raise self._unopened(name, data) from None
        bound = binding(name)
        if content.startswith(bound):
            return content[len(bound):]
        if content.startswith(BOUND):
            raise ConfigError([
                f"{where} holds tokens sealed for another connection (copied from another row?): refused; "
                + self._replace_hint(name)
            ])
        self._legacy(name, "holds tokens sealed without being bound to their connection", plain=False,
                     quiet=rotating)
        return content

    def _legacy(self, name: str, what: str, *, plain: bool, quiet: bool = False) -> None:
        """Accept a value from before binding while the store allows it (warning), else refuse it (78)."""
        where = f"connection '{name}' in the store {self.description}"
        if self._legacy_accepted():
            if not quiet:
                log.warning("%s %s; accepted only until the store's values are bound: run aweber-job store "
                            "rotate-key", where, what)
            return
        if plain:
            # Anyone who can write to the table could have put it there; not the connection's fault when the
            # key was only just set, so a fleet run leaves it due (StoreKeyError) until rotate-key.
            raise StoreKeyError([
                f"{where} {what}: refused, since anyone who can write to the table could have put it there; if it "
                "was imported or authorized without AWEBER_STORE_KEY, encrypt it: aweber-job store rotate-key"
            ])
        raise ConfigError([
            f"{where} {what} (written by hand, or copied from a row of an older aweber-job?): refused; "
            + self._replace_hint(name)
        ])

    @staticmethod
    def _replace_hint(name: str) -> str:
        return (f"replace its tokens: aweber-job connections import {name} FILE --force, or remove it "
                f"(aweber-job connections remove {name} --force) and authorize it again")

    def _legacy_accepted(self) -> bool:
        """Whether the store still accepts values from before binding (read when one is met: rotate-key, on
        any machine, may have just ended it)."""
        rows = self._database.run_named("legacy_accepted", doing=f"cannot read the store {self.description}")
        return bool(rows and rows[0][0])

    def _unopened(self, name: str, data: bytes) -> JobError:
        """Why no key opens the value of ``name``: damaged (78, the connection's), or sealed with a key not
        given (StoreKeyError, the keys')."""
        where = f"connection '{name}' in the store {self.description}"
        broken = fernet_damage(data)
        if broken is not None:
            return ConfigError([f"{where} holds a damaged encrypted value ({broken}): {self._replace_hint(name)}"])
        given = self._given()
        sealed_with = self._sealed_with(name)
        if sealed_with in self._fingerprints:
            return ConfigError([
                f"{where} holds a damaged encrypted value: it fails its integrity check under store key "
                f"{sealed_with}, which sealed it; {self._replace_hint(name)}"
            ])
        if sealed_with is not None:
            return StoreKeyError([
                f"{where} was sealed with store key {sealed_with}, which is not among the {given}: give that key "
                "too (AWEBER_STORE_KEY, after the first)"
            ])
        if self._another_opens(name):
            return ConfigError([
                f"{where} holds a damaged encrypted value: it fails its integrity check under every store key, "
                f"while the same keys open other connections of the store; {self._replace_hint(name)}"
            ])
        return StoreKeyError([f"{where} is encrypted with a key that is not among the {given}"])

    def _given(self) -> str:
        """The keys given, as messages name them: how many, and their fingerprints."""
        return f"{len(self._keys)} store key(s) given (fingerprints {', '.join(self._fingerprints)})"

    def _sealed_with(self, name: str) -> str | None:
        """The fingerprint of the key that sealed ``name`` (None: not recorded, sealed before schema version 3)."""
        rows = self._database.run_named("sealed_with", {"name": name},
                                        doing=f"cannot read connection '{name}' in the store {self.description}")
        value = rows[0][0] if rows else None
        return value if isinstance(value, str) and KEY_FINGERPRINT.fullmatch(value) else None

    def _opens(self, data: Any) -> bool:
        """Whether a key given opens ``data`` (its integrity check only)."""
        from cryptography.fernet import InvalidToken

        if self._multi is None or data is None:
            return False
        try:
            self._multi.decrypt(bytes(data))
        except InvalidToken:
            return False
        return True

    def _another_opens(self, name: str) -> bool:
        """Whether the keys open another of the most recently updated encrypted rows: then they are right."""
        rows = self._database.run_named(
            "recent_sealed_others", {"name": name, "rows": ROWS_TO_TRY},
            doing=f"cannot read the store {self.description}",
        )
        return any(self._opens(row[0]) for row in rows)

    def check_keys(self) -> None:
        """Prove the keys given open this store: StoreKeyError (78) naming the store when they cannot.

        A fleet run calls it before it claims anything: a wrong or missing key is the store's trouble, and
        found one connection at a time it would set every connection waiting for a person. The keys fail
        when a row is encrypted and none is given, or when the most recently updated encrypted rows open
        with none of them — a row that is merely damaged (broken as a Fernet token, or sealed by a key given)
        is passed over. Only fingerprints of keys are named.
        """
        self._schema.ready()
        rows = self._database.run_named(
            "recent_sealed", {"rows": ROWS_TO_TRY}, doing=f"cannot read the store {self.description}",
        )
        if not rows:
            if self._multi is not None and not self._legacy_accepted() and self._database.run_named(
                "any_tokens", doing=f"cannot read the store {self.description}",
            )[0][0]:
                raise StoreKeyError([
                    f"the store {self.description} holds only unencrypted connections but a store key is given: "
                    "encrypt them with aweber-job store rotate-key (or unset AWEBER_STORE_KEY)"
                ])
            return
        if self._multi is None:
            raise StoreKeyError([
                f"the store {self.description} holds encrypted connections but no store key is given: set "
                "AWEBER_STORE_KEY"
            ])
        tried: list[str] = []
        for name, data, sealed_with in rows:
            if self._opens(data):
                return
            value = bytes(data)
            if fernet_damage(value) is not None or sealed_with in self._fingerprints:
                continue  # damaged, not a question of keys: the next row tells
            if isinstance(sealed_with, str) and KEY_FINGERPRINT.fullmatch(sealed_with):
                raise StoreKeyError([
                    f"the {self._given()} do not open the store {self.description}: connection '{name}', one of "
                    f"the most recently updated, was sealed with store key {sealed_with}; give that key too "
                    "(AWEBER_STORE_KEY, the newest first)"
                ])
            tried.append(name)
        if tried:
            raise StoreKeyError([
                f"the {self._given()} open none of the most recently updated encrypted connections of the store "
                f"{self.description} ({', '.join(repr(n) for n in tried)}): give the keys it was sealed with "
                "(AWEBER_STORE_KEY, the newest first)"
            ])


    def rotate_key(self) -> int:
        """Seal every connection anew with the first key, bound to it (plain ones get encrypted); return how many.

        Each row in its own short transaction under ``SELECT … FOR UPDATE``, so runs are held up for
        one row at most. Once every row is sealed and bound, the store stops accepting values from before
        binding (schema version 3): a row stops the rotation, naming its connection, when no key opens it
        or it is bound to another connection.
        """
        if self._multi is None:
            raise ConfigError(["rotating the store key needs at least one store key (the new one first)"])
        self._schema.ready()
        names = [row[0] for row in self._database.run_named(
            "names_with_tokens", doing=f"cannot list the store {self.description}")]
        count = 0
        plain: list[str] = []
        for name in names:
            done, was_plain = self._rotate_one(name)
            count += done
            if was_plain:
                plain.append(name)
        if plain:
            # Anyone who can write to the table can write a plain row: name them, for an operator to recognise.
            shown = ", ".join(repr(name) for name in plain[:10]) + (f" and {len(plain) - 10} more" if len(plain) > 10
                                                                   else "")
            log.warning("%d connection(s) in the store %s were stored unencrypted and are now encrypted: %s",
                        len(plain), self.description, shown)
        self._database.run_named(
            "end_legacy", doing=f"cannot record in the store {self.description} that its values are bound")
        log.info("sealed %d connection(s) in the store %s with the first store key, each bound to its connection",
                 count, self.description)
        return count

    def _rotate_one(self, name: str) -> tuple[int, bool]:
        """Seal one row anew; return (1 when it held tokens, whether they were plain)."""
        db = self._database.connection()
        began = time.monotonic()
        try:
            with WATCHDOG.bounded(db.pgconn.socket, self._database.statement_deadline(began, None)), db.transaction():
                row = db.execute(load("rotate_read"), {"name": name}).fetchone()
                if row is None or row[0] is None:
                    return 0, False
                content = self.opened(name, bytes(row[0]), row[1], rotating=True)
                parse_token_file(content, f"connection '{name}' in the store")  # never seal what no run can use
                db.execute(load("rotate_write"), {"name": name, "tokens": self.sealed(name, content),
                                                  "sealed_with": self._fingerprints[0]})
        except self._database.psycopg.Error as exc:
            raise self._database.error(
                exc, f"cannot re-encrypt connection '{name}' in the store {self.description}") from None
        return 1, not row[1]
