"""The database itself misbehaving under real runs of the PostgreSQL store, on a private cluster: restarted
in the middle of a run, read-only before a refresh, gone after AWeber rotated the token; and
``connections import`` keeping the file it imported out of the way."""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import pytest

from job.standin import Fault
from tests.survival.conftest import StandInFactory
from tests.survival.harness import (
    ACCOUNT_ID,
    TALLY,
    Workspace,
    assert_no_traceback,
    error_lines,
)
from tests.survival.oracle import refresh_token_in
from tests.survival.pg import PgJob, PgServer, pg_server, private_pg, token_hash

__all__ = ["pg_server", "private_pg"]  # fixtures, used by name

# How long the stand-in holds a request: longer than a restart of the private cluster takes.
HOLD_SECONDS = 2.5
MARKER_SET = "refreshing_from IS NOT NULL"


@pytest.fixture
def new_job(pg_server: PgServer, start_standin: StandInFactory,
            new_workspace: Callable[..., Workspace]) -> Iterator[Callable[..., PgJob]]:
    """A seeded connection on its own stand-in; the cluster is running and writable again afterwards."""
    def make(**config: object) -> PgJob:
        job = PgJob(pg_server, new_workspace(start_standin(**config)))
        job.seed()
        return job

    try:
        yield make
    finally:
        cluster = pg_server.cluster
        if not cluster.running:
            cluster.start()
        cluster.set_read_only_everywhere(False)


def assert_the_next_run_succeeds(job: PgJob, *, label: str = "next", only_live: bool = True) -> str:
    """A whole run with the stored token: exit 0, no invalid_grant, the new token stored and live (and the
    only live one, unless another pair was issued on purpose)."""
    invalid_before = job.ws.standin.invalid_grants()
    ran = job.run(["run"], label=label)
    assert ran.returncode == 0, ran.stderr
    assert_no_traceback(ran)
    assert job.ws.standin.invalid_grants() == invalid_before
    token = job.stored_refresh_token()
    live = job.ws.standin.control.live_refresh_tokens()
    assert live == {token} if only_live else token in live
    return ran.stderr


# -- 3. the database restarted in the middle of a run -------------------------------------------------

RESTARTS = {
    # (where the stand-in holds the run, the SQL condition that shows the run is held there, restart mode)
    "while the token answer is held, fast restart": ("/oauth2/token", MARKER_SET, "fast"),
    "while the token answer is held, crash and recovery": ("/oauth2/token", MARKER_SET, "immediate"),
    "during the task's API walk, fast restart": (f"/1.0/accounts/{ACCOUNT_ID}/lists", "refreshing_from IS NULL",
                                                 "fast"),
    # Still down when the answer arrives, back a little later: the save's retries must carry it.
    "down from the held token answer until after it arrived": ("/oauth2/token", MARKER_SET, "late"),
}
# How long after the held answer was sent the database comes back in the "late" case.
BACK_AFTER_THE_ANSWER_SECONDS = 1.5


@pytest.mark.parametrize("case", list(RESTARTS))
def test_a_database_restart_mid_run_loses_nothing(case: str, new_job: Callable[..., PgJob]) -> None:
    """The run finishes (or exits 75), and the next run succeeds with the stored token."""
    scenario = f"pg restart: {case}"
    path, held, mode = RESTARTS[case]
    job = new_job()
    control = job.ws.standin.control
    before = job.stored_refresh_token()
    control.inject(Fault(delay_seconds=HOLD_SECONDS), path=path)
    with TALLY.attempt(scenario):
        started = job.start(["run"], label="restarted")
        if path.startswith("/1.0"):
            job.wait_for("the save of the new tokens", f"{held} AND fence > 0 AND tokens IS NOT NULL AND "
                         f"NOT (encode(tokens, 'hex') LIKE '%{before.encode().hex()}%')")
        else:
            job.wait_for("the start of its refresh", held)
        if mode == "late":
            job.server.cluster.stop("fast")
            time.sleep(HOLD_SECONDS + BACK_AFTER_THE_ANSWER_SECONDS)
            job.server.cluster.start()
        else:
            job.server.cluster.restart(mode)
        assert started.process.poll() is None, "the run ended before the database was back: nothing was tested"
        ran = job.finish(started)
        if mode == "late":
            assert "cannot save the new tokens" in ran.stderr and "retrying" in ran.stderr, ran.stderr
        TALLY.note(scenario, f"exit {ran.returncode}")
        assert_no_traceback(ran)
        assert ran.returncode in (0, 75), ran.stderr
        if ran.returncode == 0:
            after = job.stored_refresh_token()
            assert after != before and control.live_refresh_tokens() == {after}
        assert job.rescue_files() == []
        assert_the_next_run_succeeds(job)


# -- 4. the database read-only before a refresh ----------------------------------------------------------

STALL_CLAIM = """
CREATE FUNCTION public.stall_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.fence <> OLD.fence THEN PERFORM pg_sleep(1.5); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER stall_claim BEFORE UPDATE ON aweber_job.connections FOR EACH ROW EXECUTE FUNCTION public.stall_claim();
"""


def test_a_read_only_database_before_the_run_spends_nothing(new_job: Callable[..., PgJob]) -> None:
    """Exit 73 naming the read-only store, no token request at the stand-in, the row exactly as it was."""
    job = new_job()
    before = job.row()
    with TALLY.attempt("pg read-only: before the run"):
        job.server.cluster.set_read_only(job.database, True)
        try:
            ran = job.run(["run"], label="read-only")
        finally:
            job.server.cluster.set_read_only(job.database, False)
        assert_no_traceback(ran)
        assert ran.returncode == 73, ran.stderr
        lines = error_lines(ran.stderr)
        assert len(lines) == 1 and "read-only" in lines[0] and job.name in lines[0], ran.stderr
        assert job.ws.standin.token_requests() == 0
        assert job.row() == before
        assert_the_next_run_succeeds(job)


def test_a_database_turned_read_only_after_the_claim_spends_nothing(new_job: Callable[..., PgJob]) -> None:
    """Read-only between the lease and the refresh: the marker's write is the proof the store takes writes,
    so the run stops there with exit 73, nothing sent, the tokens and marker as they were."""
    job = new_job()
    cluster = job.server.cluster
    before = job.row()
    job.server.sql(STALL_CLAIM, job.database)
    with TALLY.attempt("pg read-only: between the claim and the refresh"):
        try:
            started = job.start(["run"], label="read-only-after-claim")
            deadline = time.monotonic() + 20
            while job.server.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                                 "AND application_name = 'aweber-job'", "postgres") != "1":
                assert time.monotonic() < deadline and started.process.poll() is None, "the claim never stalled"
                time.sleep(0.02)
            cluster.set_read_only_everywhere(True)  # the claim under way commits; the next statement is read-only
            ran = job.finish(started)
        finally:
            cluster.set_read_only_everywhere(False)
            job.server.sql("DROP TRIGGER stall_claim ON aweber_job.connections", job.database)
        assert_no_traceback(ran)
        assert ran.returncode == 73, ran.stderr
        lines = error_lines(ran.stderr)
        assert len(lines) == 1, ran.stderr
        assert "cannot record the start of a refresh" in lines[0] and "read-only" in lines[0], lines[0]
        assert job.ws.standin.token_requests() == 0
        after = job.row()
        assert after.fence == before.fence + 1, "the claim did not happen: the case was not reached"
        assert (after.data, after.marker) == (before.data, None)
        assert_the_next_run_succeeds(job)


# -- 5. the database gone after AWeber rotated the token -----------------------------------------------------


def test_a_database_gone_after_the_refresh_leaves_a_rescue_file_the_next_run_puts_back(
    new_job: Callable[..., PgJob],
) -> None:
    """Exit 73 with a CRITICAL line naming a 0600 rescue file that holds the live token; once the database is
    back, the next run on this host puts it in place and succeeds without an invalid_grant."""
    job = new_job()
    cluster = job.server.cluster
    control = job.ws.standin.control
    before = job.stored_refresh_token()
    control.inject(Fault(delay_seconds=HOLD_SECONDS), path="/oauth2/token")
    with TALLY.attempt("pg unreachable: after the refresh"):
        started = job.start(["refresh"], label="unreachable")
        job.wait_for("the start of its refresh", MARKER_SET)
        cluster.stop("fast")
        try:
            ran = job.finish(started, timeout=180)
        finally:
            cluster.start()
        assert_no_traceback(ran)
        assert ran.returncode == 73, ran.stderr
        assert [line for line in ran.stderr.splitlines() if ": critical:" in line] == error_lines(ran.stderr)
        (line,) = error_lines(ran.stderr)
        (rescue,) = job.rescue_files()
        assert str(rescue) in line, line
        assert re.fullmatch(rf"{job.name}\.\d{{8}}T\d{{6}}\.\d+Z\.from-{token_hash(before)[:16]}\.json", rescue.name)
        info = os.lstat(rescue)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        rescued = refresh_token_in(rescue)
        assert control.live_refresh_tokens() == {rescued} and rescued != before
        assert job.stored_refresh_token() == before

        stderr = assert_the_next_run_succeeds(job, label="after-rescue")
        assert f"put the tokens of rescue file {rescue}" in stderr, stderr
        assert job.rescue_files() == []


# -- 7. connections import ------------------------------------------------------------------------------------


def imported_files(ws: Workspace) -> list[str]:
    return sorted(path.name for path in ws.state_dir.glob("tokens.json.imported-*"))


def test_import_moves_the_file_aside_and_a_second_import_needs_force(new_job: Callable[..., PgJob]) -> None:
    """The file becomes FILE.imported-<UTC time> (its bytes kept); the same name again is exit 64 without
    --force (row and file untouched), and replaced with it."""
    job = new_job()  # seeded through `connections import` once already
    ws = job.ws
    with TALLY.attempt("pg import: rename, refuse, force"):
        (first,) = imported_files(ws)
        stamp = datetime.strptime(first.removeprefix("tokens.json.imported-"), "%Y%m%dT%H%M%SZ")
        assert abs(stamp.replace(tzinfo=timezone.utc).timestamp() - time.time()) < 120
        assert not ws.token_file.exists()
        assert refresh_token_in(ws.state_dir / first) == job.stored_refresh_token()

        stored = job.row()
        second = ws.seed_tokens()
        content = ws.token_file.read_bytes()
        refused = job.admin(["connections", "import", job.name, str(ws.token_file)], label="import-again")
        assert refused.returncode == 64, refused.stderr
        assert "already in the store" in refused.stderr and "--force" in refused.stderr
        assert job.row() == stored
        assert ws.token_file.read_bytes() == content and imported_files(ws) == [first]

        # Files already kept under the names this second and the next few would get are never overwritten.
        now = time.time()
        decoys = {f"tokens.json.imported-{datetime.fromtimestamp(now + n, timezone.utc):%Y%m%dT%H%M%SZ}": n
                  for n in range(-1, 4)}
        for name, n in decoys.items():
            (ws.state_dir / name).write_text(f"kept {n}\n", encoding="utf-8")
        forced = job.admin(["connections", "import", job.name, str(ws.token_file), "--force"], label="import-force")
        assert forced.returncode == 0, forced.stderr
        assert job.stored_refresh_token() == second
        assert not ws.token_file.exists()
        for name, n in decoys.items():
            assert (ws.state_dir / name).read_text(encoding="utf-8") == f"kept {n}\n", f"{name} was overwritten"
        (latest,) = set(imported_files(ws)) - {first, *decoys}
        assert latest.startswith("tokens.json.imported-"), latest
        assert (ws.state_dir / latest).read_bytes() == content
        assert latest in forced.stdout
        assert_the_next_run_succeeds(job, only_live=False)  # the pair imported first was not revoked
