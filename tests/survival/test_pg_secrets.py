"""Last of the PostgreSQL store's survival tests: with a store key, a ``pg_dump`` of the database holds no
token the stand-in ever issued; and every stdout and stderr of every run on the PostgreSQL store (this
module's and, in a whole run of the suite, the modules before it) holds no issued token, no client
secret, no store key and no database password — each looked for as it is and in every encoded form,
and in a dump also as the hex that bytea is written in."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from tests.survival.conftest import StandInFactory
from tests.survival.harness import SECRETS, TALLY, SecretScanner, Workspace, fingerprint
from tests.survival.pg import PG_OUTPUTS, PgJob, PgServer, fernet_key, pg_server, private_pg

__all__ = ["pg_server", "private_pg"]  # fixtures, used by name

SCENARIO = "secrets (pg): dump, outputs and server log scanned for every issued token, key and password"


def scanner_for(values: Iterable[str]) -> tuple[SecretScanner, dict[str, str]]:
    """A scanner for ``values`` and the hex of their UTF-8 (how pg_dump writes bytea), and which
    fingerprint each hex form stands for."""
    values = [v for v in values if len(v) >= SecretScanner.PREFIX]
    hexes = {value.encode("utf-8").hex(): value for value in values}
    by_fingerprint = {fingerprint(h): fingerprint(v) for h, v in hexes.items()}
    return SecretScanner([*values, *hexes]), by_fingerprint


def test_an_encrypted_store_dumps_no_token_and_no_output_holds_a_secret(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace],
) -> None:
    standin = start_standin(list_size=5)
    key = fernet_key()
    job = PgJob(pg_server, new_workspace(standin), name="encrypted", key=key)
    job.seed()
    # Rotating first: every token in the dump was then written by a run's own save.
    rotated = job.admin(["-vv", "store", "rotate-key"], label="rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    for log_format in ("text", "json"):
        for args in (["refresh"], ["run"], ["status"], ["status", "--json"]):
            ran = job.run(["-vv", "--log-format", log_format, *args], label=f"debug-{log_format}-{args[0]}")
            assert ran.returncode == 0, ran.stderr
        listed = job.admin(["-vv", "--log-format", log_format, "connections", "list", "--json"], label="list")
        assert listed.returncode == 0, listed.stderr

    # A plain connection beside it, imported without the key: the dump's scan must find its token.
    control = PgJob(pg_server, job.ws, name="plain-control", beside=job)
    plain_token = control.seed()
    assert not control.row().encrypted

    dump = pg_server.cluster.pg_dump(job.database).decode("utf-8", errors="replace")
    issued = set(standin.control.issued_secrets())
    SECRETS.add(*issued)
    assert job.row().data is not None
    query = f"SELECT encode(tokens, 'hex') FROM aweber_job.connections WHERE name = '{job.name}'"  # noqa: S608
    sealed_hex = pg_server.sql(query, job.database)
    assert sealed_hex in dump, "the dump does not hold the encrypted row: checking it proves nothing"

    scanner, hex_of = scanner_for([*issued, key, pg_server.password])
    found = {hex_of.get(fp, fp) for fp in scanner.find(dump)}
    assert fingerprint(plain_token) in found, "the scan of the dump cannot see a token stored in plain"
    leaked = found - plain_fingerprints(control)
    TALLY.record(SCENARIO, "failed" if leaked else "survived")
    assert leaked == set(), f"the dump holds secrets of the encrypted connection (fingerprints): {sorted(leaked)}"
    assert job.row().encrypted and job.stored_refresh_token() in standin.control.live_refresh_tokens()

    # Every output of every run on the PostgreSQL store, and this cluster's server log.
    everything = sorted(SECRETS.values | issued | {key, pg_server.password})
    scanner, hex_of = scanner_for(everything)
    places = {where: scanner.find(text) for where, text in PG_OUTPUTS}
    places["server log"] = scanner.find(pg_server.cluster.log_path.read_text(encoding="utf-8", errors="replace"))
    assert len(PG_OUTPUTS) >= 10, "too few outputs: the scan would prove little"
    assert scanner.find(f"connecting to {job.url}") == [fingerprint(pg_server.password)]
    for found_here in places.values():
        TALLY.record(SCENARIO, "failed" if found_here else "survived")
    TALLY.note(SCENARIO, "secrets looked for", len(everything))
    hits = [f"{place}: {', '.join(hex_of.get(fp, fp) for fp in fps)}" for place, fps in places.items() if fps]
    assert hits == [], "secrets found (fingerprints): " + "; ".join(hits[:20])


def plain_fingerprints(control: PgJob) -> set[str]:
    """The fingerprints of the plain control connection's tokens (they belong in the dump)."""
    data = control.row().data
    assert data is not None
    document = json.loads(data)
    return {fingerprint(str(document[k])) for k in ("access_token", "refresh_token")}
