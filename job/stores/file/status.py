"""What ``aweber-job status`` shows of the token file and its lock, without touching the network.

Shows fingerprints, never tokens, and what the next run will do with what lies beside the token
file, as the lock file's record tells (a file it puts in place, a refresh that was in flight when a
run died, files it ignores). Exit 0 when the file loads, 65 when it does not.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from job.auth.oauth1 import MIGRATE_HINT
from job.auth.tokens import fingerprint, format_expiry
from job.config import Settings
from job.errors import EXIT_OK, EXIT_TOKEN_FILE, JobError
from job.stores.file.lock import lock_path_for, read_record
from job.stores.file.recovery import survey_token_directory
from job.stores.file.tokenfile import LoadedTokens, load_token_file


@dataclass
class StatusReport:
    """Everything ``status`` prints, JSON-serialisable."""

    token_file: str
    ok: bool
    exit_code: int
    error: str | None = None
    shape: str | None = None
    access_token_fingerprint: str | None = None
    refresh_token_fingerprint: str | None = None
    consumer_key_fingerprint: str | None = None
    oauth1: bool = False
    expires_at: float | None = None
    expires_in_seconds: float | None = None
    expired: bool | None = None
    scope: str | None = None
    client_id_source: str | None = None
    client_secret_source: str | None = None
    mode: str | None = None
    owner: str | None = None
    lock_file: str | None = None
    lock_holder_pid: int | None = None
    directory_mode: str | None = None
    # The lock file's record of the last refresh, fingerprints only (state, by, at, from, to).
    last_record: dict[str, Any] | None = None
    # A temporary or rescue file holding the live tokens, which the next run puts in place.
    pending_file: str | None = None
    untrusted_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def render(self, *, as_json: bool) -> str:
        """The report as ``status`` prints it (:class:`job.stores.base.StatusView`)."""
        return render_status(self, as_json=as_json)


def _lock_holder(settings: Settings) -> tuple[str, int | None]:
    """The lock path and the pid holding it now (None when free, -1 when held by an unknown pid)."""
    path = lock_path_for(settings.token_file)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return str(path), None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pid, _, _ = read_record(settings.token_file)
            return str(path), pid or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return str(path), None
    finally:
        os.close(fd)


def _describe_surroundings(settings: Settings, report: StatusReport) -> None:
    """What the next run will find beside the token file, as warnings and fields of ``report``."""
    _, record, distrust = read_record(settings.token_file)
    running = report.lock_holder_pid is not None
    survey = survey_token_directory(settings.token_file, record, settings.fallback_rescue_dir)
    if survey.directory_mode is not None:
        report.directory_mode = f"{survey.directory_mode:04o}"
    if record is not None:
        report.last_record = {
            "state": record.state, "by": record.by, "at": record.at,
            "from": record.spent[:8] if record.spent else None, "to": record.new[:8] if record.new else None,
        }
    warning = survey.directory_warning()
    if warning:
        report.warnings.append(warning)
    if distrust:
        report.warnings.append(f"{distrust}: its record is not used (another user could have written it)")
    for untrusted in survey.untrusted:
        report.untrusted_files.append(str(untrusted.path))
        report.warnings.append(
            f"{untrusted.path} is ignored: {untrusted.reason}; the job neither uses nor removes files it did not make"
        )
    if running:
        return  # a run is under way: its files and record are changing, and are its business
    if survey.recover is not None:
        report.pending_file = str(survey.recover.path)
        report.warnings.append(
            f"{survey.recover.path} holds the live tokens (refresh token {survey.recover.fingerprint}), from a save "
            "that could not finish; the next run puts it in place"
        )
    for kept, reason in survey.kept:
        report.warnings.append(
            f"{kept.path} holds a whole token file (refresh token {kept.fingerprint}) that the job keeps: {reason}"
        )
    for rescue in survey.rescues:
        if survey.resolved:
            report.warnings.append(
                f"rescue file {rescue.path} holds older tokens (refresh token {rescue.fingerprint}) than the live "
                "ones; remove it once you no longer need it"
            )
        else:
            report.warnings.append(
                f"rescue file {rescue.path} exists: a save failed there; if it is newer than the token file, move "
                f"it into place: mv {rescue.path} {settings.token_file}"
            )
    if survey.note:
        report.warnings.append(survey.note)


def collect_status(settings: Settings, now: float | None = None) -> StatusReport:
    """Load the token file read-only (no lock taken) and describe it."""
    now = time.time() if now is None else now
    report = StatusReport(token_file=str(settings.token_file), ok=False, exit_code=EXIT_TOKEN_FILE)
    report.lock_file, report.lock_holder_pid = _lock_holder(settings)
    # After a failed save, where the new tokens are matters more than what the token file holds.
    _describe_surroundings(settings, report)
    try:
        loaded = load_token_file(settings.token_file)
    except JobError as exc:
        report.error = str(exc)
        return report
    tokens = loaded.tokens
    report.ok, report.exit_code = True, EXIT_OK
    report.shape = tokens.shape
    report.access_token_fingerprint = fingerprint(tokens.access_token) if tokens.access_token else None
    if tokens.oauth1 is not None:
        # Legacy OAuth 1.0a: nothing expires, nothing is refreshed, no OAuth 2 client is used.
        report.oauth1 = True
        report.consumer_key_fingerprint = fingerprint(tokens.oauth1.consumer_key)
        report.warnings.append(MIGRATE_HINT)
        _describe_file(report, loaded, settings)
        return report
    report.refresh_token_fingerprint = fingerprint(tokens.refresh_token)
    report.expires_at = tokens.expires_at
    if tokens.expires_at is not None:
        report.expires_in_seconds = round(tokens.expires_at - now, 1)
        report.expired = tokens.expires_at <= now
    report.scope = tokens.scope
    report.client_id_source = (
        "AWEBER_CLIENT_ID" if settings.client_id else ("token file" if tokens.client_id else None)
    )
    report.client_secret_source = settings.client_secret_source or (
        "token file" if tokens.client_secret else None
    )
    _describe_file(report, loaded, settings)
    if report.client_id_source is None:
        report.warnings.append("no client id: set AWEBER_CLIENT_ID")
    return report


def _describe_file(report: StatusReport, loaded: LoadedTokens, settings: Settings) -> None:
    """The token file's mode and owner, with a warning for each that is not as it should be."""
    mode, owner_uid, readable_by_others = loaded.mode, loaded.owner_uid, loaded.readable_by_others
    report.mode = f"{mode:04o}"
    try:
        report.owner = pwd.getpwuid(owner_uid).pw_name
    except KeyError:
        report.owner = str(owner_uid)
    if readable_by_others:
        report.warnings.append(
            f"the token file is readable by group or others (mode {mode:04o}); "
            f"chmod 600 {settings.token_file} (the next save makes it 0600)"
        )
    if owner_uid != os.geteuid():
        report.warnings.append(f"the token file is owned by {report.owner}, not by the user running this")


def render_status(report: StatusReport, *, as_json: bool) -> str:
    """Human lines, or one JSON object with ``--json``."""
    if as_json:
        return json.dumps(asdict(report), sort_keys=True) + "\n"
    lines = [f"token file:     {report.token_file}"]
    if not report.ok:
        lines.append(f"problem:        {report.error}")
    elif report.oauth1:
        rows_oauth1: list[tuple[str, Any]] = [
            ("shape", "OAuth 1.0a: the tokens do not expire"),
            ("consumer key", f"sha256:{report.consumer_key_fingerprint}"),
            ("access token", f"sha256:{report.access_token_fingerprint}"),
            ("mode, owner", f"{report.mode}, {report.owner}"),
        ]
        lines += [f"{(label + ':'):<15} {value}" for label, value in rows_oauth1]
    else:
        expiry = format_expiry(report.expires_at, time.time()) if report.expires_at is not None else "unknown"
        if report.expired:
            expiry += " — expired; the next run refreshes it"
        rows: list[tuple[str, Any]] = [
            ("shape", report.shape),
            ("access token", report.access_token_fingerprint and f"sha256:{report.access_token_fingerprint}"),
            ("refresh token", f"sha256:{report.refresh_token_fingerprint}"),
            ("access expires", expiry),
            ("scope", report.scope or "not recorded"),
            ("client id from", report.client_id_source or "nowhere"),
            ("secret from", report.client_secret_source or "none (public client, PKCE)"),
            ("mode, owner", f"{report.mode}, {report.owner}"),
        ]
        lines += [f"{(label + ':'):<15} {value}" for label, value in rows]
    holder = report.lock_holder_pid
    lock_state = "free" if holder is None else ("held by pid " + str(holder) if holder > 0 else "held")
    lines.append(f"{'lock:':<15} {report.lock_file} ({lock_state})")
    record = report.last_record
    if record is not None:
        tokens = " -> ".join(f"sha256:{record[k]}" for k in ("from", "to") if record.get(k))
        when = format_expiry(record["at"], time.time()) if record.get("at") else "unknown time"
        lines.append(f"{'last record:':<15} {record['state']} {tokens} (pid {record.get('by')}, {when})")
    lines += [f"warning:        {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"
