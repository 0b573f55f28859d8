"""The command line: arguments, wiring and exit codes — the only imperative shell.

Nothing below this module calls ``sys.exit`` or reads ``os.environ``; errors travel up as
:class:`job.errors.JobError` and are turned into one clear stderr line and an exit code here.
Heavy imports (requests, tenacity) happen inside the commands that need them, so ``--help`` and
``status`` start fast.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from job.commands.parser import (
    CONNECTION_COMMANDS,
    RUN_OPTIONS,
    build_parser,
    choose_connection,
    refuse_misplaced_run_options,
)
from job.errors import (
    EXIT_OK,
    EXIT_TASK_FAILED,
    ConfigError,
    JobError,
    OutputError,
    UsageError,
    naming_the_connection,
)

if TYPE_CHECKING:
    import requests

    from job.config import Settings
    from job.shutdown import Shutdown

# build_parser, RUN_OPTIONS and make_session are also this module's words for the tests and the tools around it.
__all__ = ["RUN_OPTIONS", "build_parser", "load_environment", "main", "make_session", "read_env_file", "tap_main"]

log = logging.getLogger("job")


def read_env_file(env_file: str | None, environ: Mapping[str, str]) -> tuple[Path | None, dict[str, str]]:
    """The env file in use (None when there is none) and its values; ConfigError for a missing or unreadable one."""
    explicit = env_file or environ.get("AWEBER_ENV_FILE") or None
    path = Path(explicit) if explicit else Path(".env")
    if not explicit and not path.is_file():
        return None, {}
    if not path.is_file():
        source = "--env-file" if env_file else "AWEBER_ENV_FILE"
        raise ConfigError([f"{source}: {path} does not exist or is not a file"])
    try:
        from dotenv import dotenv_values

        with open(path, encoding="utf-8") as handle:
            values = dotenv_values(stream=handle)
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError([f"env file {path}: cannot read it: {reason}"]) from None
    return path.absolute(), {k: v for k, v in values.items() if v is not None}


def load_environment(env_file: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The real environment over the ``.env`` file's values; raise ConfigError for a missing file."""
    _, values = read_env_file(env_file, environ)
    return {**values, **environ}


class _Origins:
    """Where each variable's value came from, for messages: the real environment wins over the env file."""

    def __init__(self, env_file: Path | None, environ: Mapping[str, str]) -> None:
        self.env_file = env_file
        self.environ = environ

    def of(self, name: str) -> str:
        return "the environment" if name in self.environ or self.env_file is None else str(self.env_file)


def _warn_about_readable_secrets(env_file: Path | None, settings: Settings) -> None:
    """Warn when the env file holding the client secret, or the secret file, can be read by every user."""

    paths = [env_file] if env_file is not None else []
    secret_file = settings.source.get("AWEBER_CLIENT_SECRET_FILE")
    if secret_file and settings.client_secret is not None:
        paths.append(Path(secret_file))
    for path in paths:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue
        if mode & stat.S_IROTH:
            log.warning(
                "%s holds the client secret and every user on this machine can read it (mode %04o): chmod 600 %s",
                path, mode, path,
            )


def _warn_about_unknown_variables(names: Sequence[str], origins: _Origins) -> None:
    """Name each ``AWEBER_`` variable the job does not read, with the known name it is closest to."""
    from job.config import misspelled_variables

    for name, closest in misspelled_variables(names):
        advice = f"; did you mean {closest}?" if closest else " (.env.example lists every one)"
        log.warning("%s (in %s) is not a variable aweber-job reads%s", name, origins.of(name), advice)


class _GuardedStdout:
    """The real standard output for a command: a write or flush that fails raises OutputError (exit 1).

    ``sys.stdout`` is None when file descriptor 1 was closed (``aweber-job tasks >&-``), and a pipe
    whose reader has gone (``aweber-job run | head -1``) fails with EPIPE: both become one plain
    line instead of an AttributeError or a BrokenPipeError. ``after`` is said after the reason.
    """

    def __init__(self, stream: IO[str] | None, *, what: str, after: str) -> None:
        self._stream = stream
        self._what = what
        self._after = after

    def _error(self, exc: Exception | None) -> OutputError:

        if isinstance(exc, BrokenPipeError):
            reason = "the reading end of the pipe was closed (broken pipe)"
        elif exc is None or isinstance(exc, ValueError) or getattr(exc, "errno", None) == errno.EBADF:
            reason = "it is closed"
        else:
            reason = getattr(exc, "strerror", None) or str(exc)
        return OutputError(f"cannot write {self._what}to standard output: {reason}{self._after}")

    def write(self, text: str) -> int:
        if self._stream is None:
            raise self._error(None)
        try:
            return self._stream.write(text)
        except (OSError, ValueError) as exc:
            raise self._error(exc) from None

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._stream is None:
            raise self._error(None)
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            raise self._error(exc) from None

    def fileno(self) -> int:
        if self._stream is None:

            raise OSError(errno.EBADF, "standard output is closed")
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:
        # isatty, seekable, tell, encoding...: the stream's own (a closed one has none, as before).
        return getattr(self._stream, name)


def _guard_stdout(command: str) -> IO[str]:
    """``sys.stdout`` behind :class:`_GuardedStdout`, with what the failing command should add."""
    if command == "run":
        guard = _GuardedStdout(
            sys.stdout, what="the task's output ",
            after="; the tokens are saved and the task's state was not advanced, so the next run repeats this "
                  "run's work (give run --output PATH, or send stdout to a file or /dev/null)",
        )
    else:
        guard = _GuardedStdout(sys.stdout, what="", after="")
    # Duck-typed: what commands and tasks call is implemented, the rest is the stream's own.
    return guard  # type: ignore[return-value]


def _settle_stdout() -> bool:
    """Flush the real stdout; on failure point fd 1 at /dev/null and return False.

    Python flushes stdout once more at exit and reports a failure there as "Exception ignored ...
    BrokenPipeError" with exit status 120; with /dev/null behind fd 1 that last flush succeeds.
    """
    stream = sys.stdout
    if stream is None:
        return True
    try:
        stream.flush()
        return True
    except (OSError, ValueError):
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return False


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         stdout: IO[str] | None = None, stdin: IO[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    if stdout is not None:
        return _main(argv, environ, stdout, stdin)
    code = _main(argv, environ, None, stdin)
    if not _settle_stdout() and code == EXIT_OK:
        log.error("cannot write to standard output: its last lines could not be written")
        return EXIT_TASK_FAILED
    return code


def _main(argv: Sequence[str] | None, environ: Mapping[str, str] | None,
          stdout: IO[str] | None, stdin: IO[str] | None) -> int:
    env_in = dict(os.environ if environ is None else environ)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        from job.logs import configure_logging

        configure_logging()
        log.error("%s", exc)
        return exc.exit_code
    from job.logs import configure_logging
    log_format = args.log_format or (env_in.get("AWEBER_LOG_FORMAT") or "text").strip().lower()
    configure_logging(verbosity=args.verbose, quiet=args.quiet, fmt="json" if log_format == "json" else "text")
    command = args.command or "run"
    out = stdout if stdout is not None else _guard_stdout(command)
    if command in ("run", "refresh") and not args.quiet and log_format != "json" and _stderr_is_a_terminal():
        from job import progress

        progress.activate(sys.stderr)
    try:
        return _dispatch(args, command, out, env_in, stdin)
    finally:
        if "job.progress" in sys.modules:
            sys.modules["job.progress"].deactivate()


def _stderr_is_a_terminal() -> bool:
    """Whether a person is watching stderr (never under cron, systemd or a pipe)."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (OSError, ValueError):
        return False


@dataclass
class _Call:
    """One command as the command line gave it; ``settings`` and the rest are filled in for the commands that
    act on tokens (all but those in ``_WITHOUT_SETTINGS``)."""

    args: argparse.Namespace
    command: str
    out: IO[str]
    stdin: IO[str] | None
    settings: Settings = None  # type: ignore[assignment]
    origins: _Origins = None  # type: ignore[assignment]
    shutdown: Shutdown = None  # type: ignore[assignment]


def _dispatch(args: argparse.Namespace, command: str, out: IO[str], env_in: dict[str, str],
              stdin: IO[str] | None) -> int:
    """The command, with every JobError turned into one line and its exit code."""
    from job.commands.run import report, report_unexpected

    connection: str | None = None  # the database connection acted on, once known
    call = _Call(args, command, out, stdin)
    try:
        refuse_misplaced_run_options(args, command)
        if getattr(args, "connection", None) is not None and command not in CONNECTION_COMMANDS:
            raise UsageError(f"--connection is an option of {', '.join(CONNECTION_COMMANDS)}, not of {command}")
        if command in _WITHOUT_SETTINGS:
            return _HANDLERS[command](call)
        env_file, file_values = read_env_file(args.env_file, env_in)
        call.origins = _Origins(env_file, env_in)
        _warn_about_unknown_variables([*file_values, *(name for name in env_in if name not in file_values)],
                                      call.origins)
        from job.config import load_settings

        settings = load_settings({**file_values, **env_in})
        _warn_about_readable_secrets(env_file if file_values.get("AWEBER_CLIENT_SECRET") else None, settings)
        call.settings = settings = choose_connection(settings, args, command)
        if args.command is None and _nothing_configured(settings):
            raise ConfigError([
                f"nothing is configured yet (no AWEBER_CLIENT_ID, no token file at {settings.token_file}): "
                "set AWEBER_CLIENT_ID and authorize with aweber-job login, try it without an account with aweber-job "
                "sandbox, or see aweber-job --help"
            ])
        if command in CONNECTION_COMMANDS:
            connection = settings.named_connection
        from job.shutdown import Shutdown

        # From here on tokens may be spent or held: TERM, INT and HUP take the one graceful path (job/shutdown.py).
        call.shutdown = Shutdown(settings.shutdown_grace_seconds)
        with call.shutdown.handling_signals():
            return _HANDLERS[command](call)
    except JobError as exc:
        report(naming_the_connection(exc, connection))
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback for the operator; -v shows it
        report_unexpected(exc)
        return EXIT_TASK_FAILED


def _nothing_configured(settings: Settings) -> bool:
    """Whether this looks like a first start: no client, no store, nothing at the token file's path."""
    return (settings.client_id is None and settings.store_url is None
            and not os.path.lexists(settings.token_file))


def _cmd_tasks(call: _Call) -> int:
    out = call.out
    from job.tasks import known_tasks

    for name, description in known_tasks():
        out.write(f"{name}\t{description}\n" if description else f"{name}\n")
    out.flush()
    return EXIT_OK


def _cmd_example(call: _Call) -> int:
    kind, out = call.args.kind, call.out
    from job.deployment import SERVICE_KINDS, example_text, fill_in, hidden_from_the_service, running_program

    program = running_program(sys.argv[0], sys.executable)
    out.write(fill_in(example_text(kind), program))
    out.flush()
    if kind in SERVICE_KINDS:
        for path, top in hidden_from_the_service(program, sys.executable):
            log.warning(
                "%s is under %s, which the service's ProtectHome=yes hides: the service would not start (203/EXEC); "
                "install into a venv under /opt made with /usr/bin/python3 (see the README)",
                path, top,
            )
    return EXIT_OK


def _cmd_demo(call: _Call) -> int:
    from job.commands.demo import run_demo

    args = call.args
    demo_code: int = run_demo(call.out, run_cli=main, keep=args.keep, verbose=args.verbose, quiet=args.quiet,
                             oauth1=args.oauth1)
    return demo_code


def _cmd_sandbox(call: _Call) -> int:
    from job.commands.sandbox import run_sandbox

    return run_sandbox(call.out, port=call.args.port, confidential=call.args.confidential, verbose=call.args.verbose)


def _cmd_state(call: _Call) -> int:
    from job.commands.state import run_state_command

    return run_state_command(call.settings, call.args, call.out)


def _cmd_store(call: _Call) -> int:
    from job.commands.connections import run_store_command

    return run_store_command(call.settings, call.args, call.out)


def _cmd_status(call: _Call) -> int:
    from job.commands.status import run_status

    return run_status(call.settings, call.out, as_json=call.args.json)


def _cmd_login(call: _Call) -> int:
    from job.commands.login import login

    args = call.args
    return login(
        call.settings, make_session(), code=args.code, redirect_uri=args.redirect_uri, scope=args.scope,
        force=args.force, stdin=call.stdin or sys.stdin, stdout=call.out,
    )


def _cmd_revoke(call: _Call) -> int:
    from job.commands.revoke import run_revoke

    return run_revoke(call.settings, make_session())


def _cmd_tap(call: _Call) -> int:
    if call.args.env_file is not None:
        raise UsageError("--env-file is not an option of tap: its settings come from --config alone")
    from job.commands.tap import run_tap_command

    return run_tap_command(call.args, call.out)


def tap_main() -> int:
    """The program ``tap-aweber``: ``aweber-job tap`` under the name orchestrators give an extractor."""
    return main(["tap", *sys.argv[1:]])


def _cmd_run(call: _Call) -> int:
    from job.commands.run import run_command

    return run_command(call.settings, call.args, call.out, call.origins.of, call.shutdown,
                       refresh_only=call.command == "refresh")


# Every command and what carries it out (each handler imports its own modules, so `--help` loads none of them).
_HANDLERS: dict[str, Callable[[_Call], int]] = {
    "run": _cmd_run,
    "refresh": _cmd_run,
    "status": _cmd_status,
    "login": _cmd_login,
    "revoke": _cmd_revoke,
    "tasks": _cmd_tasks,
    "demo": _cmd_demo,
    "example": _cmd_example,
    "store": _cmd_store,
    "connections": _cmd_store,
    "sandbox": _cmd_sandbox,
    "state": _cmd_state,
    "tap": _cmd_tap,
}
# The commands that need neither the settings nor the stop signals (the tap reads its own from --config).
_WITHOUT_SETTINGS = ("tasks", "example", "demo", "sandbox", "tap")


def make_session() -> requests.Session:
    """One HTTP session for the run, naming the job in its User-Agent (job.commands.run.make_session)."""
    from job.commands.run import make_session as session

    return session()


if __name__ == "__main__":
    sys.exit(main())
