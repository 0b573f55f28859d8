"""Stops in the windows around a command's database writes, for the promise: a refresh token AWeber handed over
is saved where the next run finds it, no refresh token is sent twice, every deadline holds, and the exit code says
what happened (`login` and `connections import` while the store's answer is held, `run --all` before its first
claim and during its key check, a run whose committed claim is unanswered).

Each test runs real ``aweber-job`` processes against the stand-in and a private PostgreSQL cluster (through the
fault proxy where the link matters) and judges by the stand-in's record (live refresh tokens, invalid_grant
answers), never by the job's words.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.survival.conftest import StandInFactory
from tests.survival.dbproxy import DbProxy
from tests.survival.harness import REPO, SECRETS, Workspace
from tests.survival.pg import PgJob, PgServer, pg_server, private_pg

__all__ = ["pg_server", "private_pg"]  # fixtures, used by name

GRACE_SECONDS = 5.0
EXIT_MARGIN_SECONDS = 3.0
INSERT = b"INSERT INTO aweber_job.connections (name, tokens"
KEY_CHECK = b"SELECT name, tokens, sealed_with FROM"


@pytest.fixture
def proxy(pg_server: PgServer) -> Iterator[DbProxy]:
    with DbProxy(pg_server.cluster.port) as running:
        yield running


def refresh_tokens_kept(job: PgJob) -> set[str]:
    """Every refresh token the next run could find: the row's, and those of files in the rescue directory."""
    kept: set[str] = set()
    stored = job.row().refresh_token() if _row_exists(job) else None
    if stored:
        kept.add(stored)
    directory = job.rescue_dir()
    if directory.exists():
        for path in directory.iterdir():
            try:
                value = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(value, dict) and isinstance(value.get("refresh_token"), str):
                kept.add(value["refresh_token"])
    SECRETS.add(*kept)
    return kept


def _row_exists(job: PgJob) -> bool:
    query = f"SELECT count(*) FROM aweber_job.connections WHERE name = '{job.name}'"  # noqa: S608
    return job.server.sql(query, job.database) == "1"


# -- 1. a login stopped while the store takes its tokens ------------------------------------------------

@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["TERM", "HUP", "INT"])
def test_login_signalled_while_its_save_is_held_keeps_the_new_tokens(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace], proxy: DbProxy,
    stop: signal.Signals,
) -> None:
    """``--connection NAME login``: the code is exchanged, AWeber hands over a refresh token, and the INSERT that
    stores it is held by the link when SIGTERM comes (systemd stopping a session, a closed terminal sends HUP).
    The new refresh token must end up in the store or in a rescue file; a run stops the same way and keeps it."""
    ws = new_workspace(start_standin())
    job = PgJob(pg_server, ws, name="fresh-login")
    trigger = proxy.arm(INSERT, action="hold", scope="all")
    env = job.env(AWEBER_STORE=proxy.route(job.url), AWEBER_SHUTDOWN_GRACE=str(GRACE_SECONDS))
    err_path = ws.logs / "login-stopped.err"
    ws.logs.mkdir(parents=True, exist_ok=True)
    with open(err_path, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "job", "--connection", job.name, "login"], env=env, cwd=REPO, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            while line := process.stdout.readline():
                if line.startswith(("http://", "https://")):
                    approval = requests.get(line.strip(), allow_redirects=False, timeout=10)
                    if approval.status_code == 302:
                        code = parse_qs(urlsplit(approval.headers["Location"]).query)["code"][0]
                    else:
                        code = approval.headers["X-Authorization-Code"]
                    SECRETS.add(code)
                    process.stdin.write(code + "\n")
                    process.stdin.flush()
                    break
            assert trigger.wait(30), "the login never tried to store its tokens"
            time.sleep(0.5)
            signalled = time.monotonic()
            process.send_signal(stop)
            returncode = process.wait(timeout=60)
            took = time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    SECRETS.add_output("login stopped", stderr)
    # Not released: the bytes of a process that is gone never reach the server (a release would send them now).
    live = ws.standin.control.live_refresh_tokens()
    assert live, "the stand-in issued no tokens: the exchange did not happen"
    assert live & refresh_tokens_kept(job), (
        f"exit {returncode}: AWeber handed over a refresh token that neither the store nor a rescue file holds; "
        f"stderr: {stderr!r}")
    assert returncode == 73, stderr
    assert took <= GRACE_SECONDS + EXIT_MARGIN_SECONDS, f"exited {took:.1f} s after the signal: {stderr!r}"


# -- 2. an import stopped after the store committed it -------------------------------------------------

def test_import_stopped_after_commit_leaves_the_refresh_token_live_in_one_place_only(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace], proxy: DbProxy,
) -> None:
    """``connections import NAME FILE``: the INSERT commits, its answer is held by the link, and SIGTERM comes
    before the file is renamed. The token file still holds the refresh token the store now holds: the old
    setup's run refreshes it, the store's run presents the spent one (invalid_grant, and a revoked grant at a
    strict server). The design promises "one refresh token is never live in two places"."""
    ws = new_workspace(start_standin())
    job = PgJob(pg_server, ws, name="imported")
    token = ws.seed_tokens()
    trigger = proxy.arm(INSERT, action="hold", forward=True, scope="all")
    started = ws.start(["connections", "import", job.name, str(ws.token_file)],
                       job.env(AWEBER_STORE=proxy.route(job.url), AWEBER_SHUTDOWN_GRACE=str(GRACE_SECONDS)),
                       label="import-stopped")
    assert trigger.wait(30), "the import never reached the store"
    time.sleep(0.5)
    started.process.send_signal(signal.SIGTERM)
    ran = started.finish(timeout=60)
    proxy.release()
    assert job.stored_refresh_token() == token, "the INSERT was committed"
    # The old setup (the token file) runs once more, as its timer would; then the store's run.
    old = ws.run(["run", "--task", "noop"], ws.env(), label="old-setup")
    new = job.run(["run", "--task", "noop"], label="store-run", AWEBER_RUN_INTERVAL="0")
    assert ws.standin.invalid_grants() == 0, (
        f"import exited {ran.returncode} and left {ws.token_file} in place: the old setup's run (exit "
        f"{old.returncode}) spent the token, the store's run (exit {new.returncode}) presented it again")


# -- 3. a fleet run stopped before it claimed anything -------------------------------------------------

def two_due_connections(pg_server: PgServer, ws: Workspace) -> tuple[PgJob, PgJob]:
    first = PgJob(pg_server, ws, name="fleet-a")
    first.seed()
    second = PgJob(pg_server, ws, name="fleet-b", beside=first)
    second.seed()
    return first, second


def test_fleet_run_whose_time_limit_ends_before_any_claim_does_not_exit_0(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace],
) -> None:
    """``run --all`` with AWEBER_RUN_TIMEOUT reached before the first claim (a tiny limit here; in production a
    slow rescue put-back or key check before the claims): two connections are due and none is run. Work was
    left, so the exit is 75 (§12: "then exits (75 when work was left)"); 0 tells the scheduler all is well."""
    ws = new_workspace(start_standin())
    first, _ = two_due_connections(pg_server, ws)
    ran = first.admin(["run", "--all", "--task", "noop"], label="fleet-timeout", AWEBER_RUN_INTERVAL="0",
                      AWEBER_RUN_TIMEOUT="0.000001")
    not_run = first.server.sql("SELECT count(*) FROM aweber_job.connections WHERE last_run_at IS NULL",
                               first.database)
    if not_run != "0":
        assert ran.returncode == 75, f"exit {ran.returncode} with {not_run} due connections not run: {ran.stderr!r}"


def test_fleet_run_signalled_during_its_key_check_takes_the_stop_path(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace], proxy: DbProxy,
) -> None:
    """SIGTERM while ``run --all`` proves its store keys (the statement held by a slow link): §13 says TERM is
    one path for ``run --all``, ending in 75 within the grace; the key check runs before the handlers are
    installed, so the process dies by the signal instead (no exit line, no ping, exit -15)."""
    ws = new_workspace(start_standin())
    first, _ = two_due_connections(pg_server, ws)
    trigger = proxy.arm(KEY_CHECK, action="hold", scope="all")
    started = ws.start(["run", "--all", "--task", "noop"],
                       first.env(AWEBER_STORE=proxy.route(first.url), AWEBER_RUN_INTERVAL="0",
                                 AWEBER_SHUTDOWN_GRACE=str(GRACE_SECONDS)), label="fleet-keycheck")
    assert trigger.wait(30), "the key check never reached the link"
    time.sleep(0.3)
    signalled = time.monotonic()
    started.process.send_signal(signal.SIGTERM)
    ran = started.finish(timeout=60)
    proxy.release()
    assert time.monotonic() - signalled <= GRACE_SECONDS + EXIT_MARGIN_SECONDS
    assert ws.standin.token_requests() == 0
    assert ran.returncode == 75, f"exit {ran.returncode}: {ran.stderr!r}"


# -- 4. a run stopped while its claim is committed but not yet answered --------------------------------

CLAIM = b"SET fence = fence + 1, lease_holder"


def test_run_signalled_while_its_committed_claim_is_unanswered_stops_and_the_next_run_goes_on(
    pg_server: PgServer, start_standin: StandInFactory, new_workspace: Callable[..., Workspace], proxy: DbProxy,
) -> None:
    """The claim's UPDATE commits and its answer is held; SIGTERM: the run ends 75 within the grace with nothing
    sent, and the next run on this machine takes the lease of the dead process at once and refreshes."""
    ws = new_workspace(start_standin())
    job = PgJob(pg_server, ws, name="claim-held")
    job.seed()
    trigger = proxy.arm(CLAIM, action="hold", forward=True, scope="all")
    started = job.start(["run", "--task", "noop"], label="claim-held",
                        AWEBER_STORE=proxy.route(job.url), AWEBER_SHUTDOWN_GRACE=str(GRACE_SECONDS))
    assert trigger.wait(30), "the claim never reached the link"
    time.sleep(0.3)
    signalled = time.monotonic()
    started.process.send_signal(signal.SIGTERM)
    ran = job.finish(started, timeout=60)
    took = time.monotonic() - signalled
    proxy.release()
    assert ran.returncode == 75, ran.stderr
    assert took <= GRACE_SECONDS + EXIT_MARGIN_SECONDS, f"exited {took:.1f} s after SIGTERM"
    assert ws.standin.token_requests() == 0
    after = job.run(["run", "--task", "noop"], label="after-claim-held", AWEBER_RUN_INTERVAL="0")
    assert after.returncode == 0, after.stderr
    assert ws.standin.invalid_grants() == 0
    assert job.stored_refresh_token() in ws.standin.control.live_refresh_tokens()
