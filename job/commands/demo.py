"""``aweber-job demo``: the real ``run`` cycle against the built-in stand-in AWeber, on loopback.

It needs no account and no network. A stand-in with one account and three lists is started on
127.0.0.1, a token file is written in a temporary directory, and :func:`job.cli.main` runs
``run`` twice exactly as cron would: the first run refreshes (and so rotates) the tokens and
reports the subscribers of the last 24 hours, the second finds nothing new because the
watermark remembers. Each step is checked; the report shows fingerprints, never a token.

``demo --oauth1`` shows the legacy path instead: a token file with OAuth 1.0a credentials, requests
signed with HMAC-SHA1 and verified by the stand-in, no token request at all, the file unchanged.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from job.auth.tokens import fingerprint, new_token_file
from job.errors import EXIT_OK, EXIT_TASK_FAILED
from job.logs import REDACTOR

# The command line's entry point: main(argv, environ=..., stdout=...) -> exit code.
RunCli = Callable[..., int]

if TYPE_CHECKING:
    from job.standin import StandIn

DEMO_CLIENT_ID = "demo-client"
ACCOUNT_ID = 1234567
HOUR = 3600
DAY = 86_400

# (list id, name, generated subscribers, (hours ago, name, email) of those who joined in the last day)
LISTS: Sequence[tuple[int, str, int, Sequence[tuple[float, str, str]]]] = (
    (4815162, "Weekly Newsletter", 400, (
        (20.5, "Ada Lovelace", "ada@example.com"),
        (9.25, "Grace Hopper", "grace@example.org"),
        (1.5, "Alan Turing", "alan@example.net"),
    )),
    (4815163, "Webinar Sign-ups", 250, (
        (14.0, "Katherine Johnson", "katherine@example.com"),
        (3.75, "Edsger Dijkstra", "edsger@example.org"),
    )),
    (4815164, "Product Updates", 300, ()),
)


# The demo's one-line result: the same every time, since the stand-in's recent subscribers are fixed.
RESULT = (
    f"tokens rotated twice and saved, {sum(len(recent) for *_, recent in LISTS)} new subscribers reported once."
)
RESULT_OAUTH1 = (
    f"{sum(len(recent) for *_, recent in LISTS)} new subscribers reported once, with no token request; "
    "to move to OAuth 2 as AWeber asks: aweber-job login --force"
)


class DemoFailure(Exception):
    """A step of the demo did not turn out as it should; the text says which."""


@dataclass(frozen=True)
class RunReport:
    """What one inner ``run`` did, as seen from outside: output rows, files, counters."""

    exit_code: int
    rows: list[dict[str, Any]]
    fingerprint_before: str
    fingerprint_after: str
    token_requests: int
    api_requests: int


def run_demo(
    out: IO[str], *, run_cli: RunCli, keep: bool = False, verbose: int = 0, quiet: bool = False, oauth1: bool = False
) -> int:
    """Run the demo (``oauth1``: the legacy OAuth 1.0a one), print what happened to ``out``; 0 when
    every check passed, non-zero otherwise.

    ``quiet`` keeps only the one-line result (and, with ``keep``, where the files are): the inner
    runs log warnings and errors only, and the step-by-step report is not printed. ``run_cli`` is the
    command line's own entry point (``job.cli.main``), passed in so the demo runs exactly what a user runs.
    """
    from job.standin import StandIn

    workdir = Path(tempfile.mkdtemp(prefix="aweber-job-demo-"))
    server = StandIn(clients={DEMO_CLIENT_ID: None})
    code = EXIT_TASK_FAILED
    report = io.StringIO() if quiet else out
    try:
        server.start()
        demo = _demo_oauth1 if oauth1 else _demo
        code = demo(server, workdir, report, verbose=verbose, quiet=quiet, run_cli=run_cli)
        # The demo checked that run 1 reported exactly the recent subscribers, so RESULT's count holds.
        out.write(("\n" if not quiet else "") + f"demo OK: {RESULT_OAUTH1 if oauth1 else RESULT}\n")
    except DemoFailure as failure:
        out.write(("\n" if not quiet else "") + f"demo FAILED: {failure}\n")
    except OSError as exc:
        out.write(("\n" if not quiet else "") + f"demo FAILED: {type(exc).__name__}: {exc}\n")
    finally:
        server.stop()
        if keep:
            out.write(f"kept the demo's files in {workdir}\n")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            if not quiet:
                out.write("removed the demo's temporary directory (demo --keep keeps it, to look at its files)\n")
        out.flush()
    return code


def _environment(server: StandIn, workdir: Path, token_file: Path) -> dict[str, str]:
    """The demo's whole configuration, pointing at the stand-in."""
    # An empty env file keeps a .env in the working directory out of the demo's configuration.
    env_file = workdir / "demo.env"
    env_file.write_text("# the demo sets everything in its environment\n", encoding="utf-8")
    return {
        "AWEBER_ENV_FILE": str(env_file),
        "AWEBER_CLIENT_ID": DEMO_CLIENT_ID,
        "AWEBER_TOKEN_FILE": str(token_file),
        "AWEBER_TOKEN_URL": server.token_url,
        "AWEBER_AUTHORIZE_URL": server.authorize_url,
        "AWEBER_REVOKE_URL": server.revoke_url,
        "AWEBER_API_URL": server.api_url,
        "AWEBER_HTTP_TIMEOUT": "5",
        "AWEBER_RETRY_DEADLINE": "10",
        "AWEBER_LOCK_TIMEOUT": "5",
        "HOME": str(workdir),
    }


def _demo(server: StandIn, workdir: Path, out: IO[str], *, verbose: int, quiet: bool, run_cli: RunCli) -> int:
    now = time.time()
    expected = populate(server, now)
    token_file = workdir / "tokens.json"
    grant = server.issue_tokens(DEMO_CLIENT_ID)
    REDACTOR.add(str(grant["access_token"]), str(grant["refresh_token"]))
    token_file.write_bytes(new_token_file(grant, now).to_bytes())
    os.chmod(token_file, 0o600)
    environ = _environment(server, workdir, token_file)
    # The report below says what each run did; their own log lines would say it again (demo -v shows them).
    flags = ["-v"] * verbose if verbose and not quiet else ["-q"]

    out.write(
        f"aweber-job demo: the whole run cycle against a stand-in AWeber at {server.base_url}\n"
        f"(loopback only, no account needed; public client {DEMO_CLIENT_ID!r}, account {ACCOUNT_ID}, "
        f"{len(LISTS)} lists)\n\n"
    )

    first = _run_once(server, token_file, environ, flags, run_cli)
    _check_rotation(server, first, 1)
    _check_mode(token_file)
    want = [(row["list_id"], row["email"]) for row in expected]
    got = [(row.get("list_id"), row.get("email")) for row in first.rows]
    if sorted(got) != sorted(want):
        raise DemoFailure(f"run 1 reported {got}, expected {want}")
    out.write("Run 1 (first run: looks back 24 hours)\n")
    _write_run(out, first, token_file)
    _write_table(out, first.rows)

    second = _run_once(server, token_file, environ, flags, run_cli)
    _check_rotation(server, second, 2)
    if second.fingerprint_before != first.fingerprint_after:
        raise DemoFailure("run 2 did not start from the refresh token that run 1 saved")
    if second.rows:
        raise DemoFailure(f"run 2 reported {len(second.rows)} subscriber(s) again; the watermark did not hold")
    out.write("\nRun 2 (the next run: nothing new has arrived since)\n")
    _write_run(out, second, token_file)

    state_files = sorted(token_file.parent.glob("*.state.json"))
    if state_files:
        # The demo's directory goes away unless --keep: say where a real run keeps them, by name.
        out.write(f"\nWatermarks (latest subscribed_at reported per list) are kept in {state_files[0].name}, "
                  "beside the token file\n")
    return EXIT_OK


def _demo_oauth1(server: StandIn, workdir: Path, out: IO[str], *, verbose: int, quiet: bool,
                 run_cli: RunCli) -> int:
    """Two runs with legacy OAuth 1.0a credentials: signed requests, no token request, file untouched."""
    now = time.time()
    expected = populate(server, now)
    token_file = workdir / "tokens.json"
    grant = server.add_oauth1_credentials()
    credentials = grant.as_token_file()
    REDACTOR.add(*credentials.values())
    token_file.write_text(json.dumps(credentials, indent=2) + "\n", encoding="utf-8")
    os.chmod(token_file, 0o600)
    saved = token_file.read_bytes()
    environ = _environment(server, workdir, token_file)
    environ.pop("AWEBER_CLIENT_ID")  # an OAuth 1.0a file carries its own consumer key
    # The report below says what each run did; their own log lines would say it again (demo -v shows them).
    flags = ["-v"] * verbose if verbose and not quiet else ["-q"]

    out.write(
        f"aweber-job demo --oauth1: a legacy OAuth 1.0a integration against a stand-in AWeber at {server.base_url}\n"
        f"(loopback only; consumer key {fingerprint(grant.consumer_key)}, access token "
        f"{fingerprint(grant.access_token)}: SHA-256 fingerprints; OAuth 1.0a tokens do not expire)\n\n"
    )
    want = sorted((row["list_id"], row["email"]) for row in expected)
    for number, wanted in ((1, want), (2, [])):
        report = _run_once(server, token_file, environ, flags, run_cli, legacy=True)
        got = sorted((row.get("list_id"), row.get("email")) for row in report.rows)
        if got != wanted:
            raise DemoFailure(f"run {number} reported {got}, expected {wanted}")
        if report.token_requests:
            raise DemoFailure(f"run {number} made {report.token_requests} token request(s); OAuth 1.0a needs none")
        if token_file.read_bytes() != saved:
            raise DemoFailure(f"run {number} changed the OAuth 1.0a token file; it must be kept as it came")
        title = "first run: looks back 24 hours" if number == 1 else "the next run: nothing new has arrived since"
        out.write(f"Run {number} ({title})\n  requests signed with OAuth 1.0a HMAC-SHA1; the token file is unchanged\n")
        _write_counts(out, report)
        if number == 1:
            _write_table(out, report.rows)
        out.write("\n")
    return EXIT_OK


def populate(server: StandIn, now: float) -> list[dict[str, Any]]:
    """One account with a few lists: older subscribers over the last weeks, a handful in the last 24 h."""
    server.add_account(ACCOUNT_ID, company="Demo Company")
    expected: list[dict[str, Any]] = []
    for seed, (list_id, name, size, recent) in enumerate(LISTS):
        # The generated subscribers end two days ago, so the first run's 24 hours hold only `recent`.
        server.add_list(ACCOUNT_ID, list_id, name, size=size, start=now - 30 * DAY, end=now - 2 * DAY, seed=seed)
        entries = [
            {"email": email, "name": person, "subscribed_at": round(now - hours_ago * HOUR, 3)}
            for hours_ago, person, email in recent
        ]
        if entries:
            server.add_subscribers(ACCOUNT_ID, list_id, entries)
        expected.extend({"list_id": list_id, "list_name": name, "email": entry["email"]} for entry in entries)
    return expected


def _run_once(
    server: StandIn, token_file: Path, environ: dict[str, str], flags: list[str], run_cli: RunCli, *,
    legacy: bool = False,
) -> RunReport:
    """``aweber-job run`` in this process, exactly as the console script runs it.

    ``legacy``: the token file holds OAuth 1.0a credentials, fingerprinted whole (no refresh token).
    """
    def token_fingerprint() -> str:
        if legacy:
            return fingerprint(token_file.read_text(encoding="utf-8"))
        return fingerprint(_refresh_token(token_file))

    before = token_fingerprint()
    counts_before = _request_counts(server)
    buffer = io.StringIO()
    exit_code = run_cli([*flags, "run"], environ=environ, stdout=buffer)
    counts_after = _request_counts(server)
    if exit_code != EXIT_OK:
        raise DemoFailure(f"aweber-job run exited {exit_code} (its log lines above say why)")
    rows = []
    for number, line in enumerate(buffer.getvalue().splitlines(), start=1):
        try:
            row = json.loads(line)
        except ValueError:
            raise DemoFailure(f"output line {number} is not JSON") from None
        if not isinstance(row, dict):
            raise DemoFailure(f"output line {number} is not a JSON object")
        rows.append(row)
    return RunReport(
        exit_code=exit_code,
        rows=rows,
        fingerprint_before=before,
        fingerprint_after=token_fingerprint(),
        token_requests=counts_after[0] - counts_before[0],
        api_requests=counts_after[1] - counts_before[1],
    )


def _refresh_token(token_file: Path) -> str:
    try:
        document = json.loads(token_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DemoFailure(f"cannot read the token file {token_file}: {exc}") from None
    value = document.get("refresh_token") if isinstance(document, dict) else None
    if not isinstance(value, str) or not value:
        raise DemoFailure(f"the token file {token_file} holds no refresh token")
    return value


def _request_counts(server: StandIn) -> tuple[int, int]:
    """(token endpoint requests, API requests) the stand-in has seen so far."""
    stats = server.stats()

    def total(kind: str) -> int:
        counts = stats.get(kind)
        return sum(n for n in counts.values() if isinstance(n, int)) if isinstance(counts, dict) else 0

    return total("token"), total("api")


def _check_rotation(server: StandIn, report: RunReport, number: int) -> None:
    if report.fingerprint_after == report.fingerprint_before:
        raise DemoFailure(f"run {number} did not save a new refresh token")
    live = {fingerprint(token) for token in server.live_refresh_tokens()}
    if report.fingerprint_after not in live:
        raise DemoFailure(f"run {number} saved a refresh token the stand-in does not accept")
    if report.fingerprint_before in live:
        raise DemoFailure(f"run {number}'s old refresh token still works; it should have been spent")


def _check_mode(token_file: Path) -> None:
    mode = stat.S_IMODE(token_file.stat().st_mode)
    if mode != 0o600:
        raise DemoFailure(f"the token file {token_file} has mode {mode:04o}, not 0600")


def _write_run(out: IO[str], report: RunReport, token_file: Path) -> None:
    out.write(
        f"  token refreshed and rotated: refresh token {report.fingerprint_before} -> {report.fingerprint_after}"
        " (SHA-256 fingerprints; the old one no longer works)\n"
        f"  saved atomically to {token_file.name} in the demo's temporary directory (mode 0600)\n"
    )
    _write_counts(out, report)


def _write_counts(out: IO[str], report: RunReport) -> None:
    counts = {list_id: 0 for list_id, _, _, _ in LISTS}
    for row in report.rows:
        counts[row["list_id"]] = counts.get(row["list_id"], 0) + 1
    for list_id, name, _, _ in LISTS:
        out.write(f'  list {list_id} "{name}": {counts.get(list_id, 0)} new\n')
    out.write(f"  requests: {report.token_requests} to the token endpoint, {report.api_requests} to the API\n")


def _write_table(out: IO[str], rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = ("list_name", "email", "name", "subscribed_at")
    headers = ("LIST", "EMAIL", "NAME", "SUBSCRIBED_AT")
    cells = [[str(row.get(column) or "") for column in columns] for row in rows]
    widths = [max(len(header), *(len(line[i]) for line in cells)) for i, header in enumerate(headers)]
    out.write("  new subscribers (oldest first per list):\n")
    for line in [list(headers), *cells]:
        padded = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        out.write("    " + "  ".join(padded).rstrip() + "\n")
