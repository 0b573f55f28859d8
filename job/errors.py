"""One exception tree for the job; each class carries the exit code the CLI maps it to.

Messages are written for an operator reading stderr at 3 a.m.: what is wrong, where, and what
to do. They never contain a secret; callers pass fingerprints or names, not values.
"""

from __future__ import annotations

import re

# Exit codes (docs/design.md §7). The CLI is the only place that turns them into a process status.
EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 64
EXIT_TOKEN_FILE = 65
EXIT_CANT_WRITE = 73
EXIT_TEMPORARY = 75
EXIT_PROTOCOL = 76
EXIT_AUTH = 77
EXIT_CONFIG = 78

EXIT_MEANINGS = {
    EXIT_OK: "success",
    EXIT_TASK_FAILED: "the task failed (tokens are saved)",
    EXIT_USAGE: "usage error",
    EXIT_TOKEN_FILE: "token file unreadable or invalid",
    EXIT_CANT_WRITE: "cannot write the token file or state",
    EXIT_TEMPORARY: "temporary failure, try again later",
    EXIT_PROTOCOL: "the token endpoint answered with something unusable",
    EXIT_AUTH: "authorization refused, authorize again",
    EXIT_CONFIG: "configuration error",
}


def shorten(text: object, limit: int = 200) -> str:
    """One line of at most ``limit`` characters, for quoting a server's words in a message."""
    value = " ".join(str(text).split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


class JobError(Exception):
    """Base of every error the job raises on purpose; ``exit_code`` says how the run ends."""

    exit_code: int = EXIT_TASK_FAILED
    retryable: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


def naming_the_connection(exc: JobError, connection: str | None) -> JobError:
    """The error with every ``aweber-job login`` it advises aimed at the database connection that failed.

    The advice is written once for both stores; on the PostgreSQL store a bare ``aweber-job login``
    would authorize the connection AWEBER_CONNECTION names (else 'default'), not the one that failed
    (a single run's or one of a fleet run's many).
    """
    if connection is None:
        return exc
    aimed = f"aweber-job --connection {connection} login"
    exc.message = re.sub(r"\baweber-job login\b", lambda _: aimed, exc.message)
    if exc.hint:
        exc.hint = re.sub(r"\baweber-job login\b", lambda _: aimed, exc.hint)
    return exc


class UsageError(JobError):
    """A bad option or an unknown task name."""

    exit_code = EXIT_USAGE


class OutputError(JobError):
    """Standard output cannot be written: it is closed, or its reader has gone (a broken pipe)."""

    exit_code = EXIT_TASK_FAILED


class ConfigError(JobError):
    """One or more configuration variables are wrong; ``problems`` lists each with its variable."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"configuration error: {self.problems[0]}"
        else:
            message = f"{len(self.problems)} configuration errors: " + "; ".join(self.problems)
        super().__init__(message)


class StoreKeyError(ConfigError):
    """The store keys given do not fit a stored value: no key for an encrypted row, a row sealed with a key
    not given, or an unencrypted row while a key is set.

    The remedy is the keys (or ``store rotate-key``), not the connection: a fleet run leaves such a
    connection due instead of recording it as waiting for a person.
    """


class TokenFileError(JobError):
    """The token file is missing, unreadable or not a valid token file."""

    exit_code = EXIT_TOKEN_FILE


class StorageError(JobError):
    """The token file or task state cannot be written."""

    exit_code = EXIT_CANT_WRITE


class TokenNotSavedError(StorageError):
    """A refresh succeeded but its tokens could not be saved anywhere (CRITICAL)."""


class TemporaryError(JobError):
    """Network trouble, 5xx, rate limit after retries, a busy lock: try again later.

    ``retry_after_seconds`` is how long the server asked us to wait, when it said.
    """

    exit_code = EXIT_TEMPORARY
    retryable = True

    def __init__(self, message: str, *, hint: str | None = None, retry_after_seconds: float | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_seconds = retry_after_seconds


class RunTimeoutError(TemporaryError):
    """The run reached AWEBER_RUN_TIMEOUT: it stops where it is, keeping what it did, and exits 75."""

    # Waiting or retrying is exactly what the limit forbids.
    retryable = False


class TaskStoppedError(RunTimeoutError):
    """A task stopped short on a trouble of its own (a receiver down): raise it from a task to end the run
    as the time limit ends it, with the state saved as the task left it and exit 75, so the next run
    continues from there (docs/tasks.md). new-subscribers, run inside another task, keeps its watermark
    up to the subscriber at which it was raised."""


class LockBusyError(TemporaryError):
    """Another run holds the lock beyond the wait limit."""

    retryable = False


class ProtocolError(JobError):
    """The token endpoint answered 2xx with something that is not a usable token."""

    exit_code = EXIT_PROTOCOL


class AuthError(JobError):
    """Authorization was refused: ``aweber-job login`` is needed, or the client credentials are wrong."""

    exit_code = EXIT_AUTH


class ApiError(JobError):
    """The AWeber API refused a request with a non-retryable 4xx; carries AWeber's error fields."""

    exit_code = EXIT_TASK_FAILED

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.error_type = error_type


class TaskError(JobError):
    """A task failed; raise it (or a subclass) from a task to end the run with exit 1."""

    exit_code = EXIT_TASK_FAILED


class CollectionShiftedError(TemporaryError):
    """A collection read page by page changed under the walk (an entry left or joined before the offset)."""
