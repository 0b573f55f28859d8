"""The command line: arguments, wiring and exit codes — the only imperative shell.

Nothing below this module calls ``sys.exit`` or reads ``os.environ``; errors travel up as
:class:`job.errors.JobError` and are turned into one clear stderr line and an exit code here.
Heavy imports (requests, tenacity) happen inside the commands that need them, so ``--help`` and
``status`` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence

from job import __version__
from job.deployment import EXAMPLES
from job.errors import (
    EXIT_OK,
    EXIT_TASK_FAILED,
    ConfigError,
    JobError,
    OutputError,
    UsageError,
    naming_the_connection,
)

# Importing typing costs about 2 ms of every start-up (a tenth of `--help`), and this module needs
# it only for annotations, which are strings here; type checkers read TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from pathlib import Path
    from typing import IO, Any, NoReturn

    import requests

    from job.config import Settings


def _log() -> logging.Logger:
    # logging is imported on first use: `--help` and `--version` never need it.
    import logging

    return logging.getLogger("job")

COMMANDS = ("run", "refresh", "status", "login", "revoke", "tasks", "demo", "example", "store", "connections")
# The commands that act on one connection, and so take --connection.
CONNECTION_COMMANDS = ("run", "refresh", "status", "login", "revoke")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 64) instead of exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the defaults are suppressed so `aweber-job -q run` and `aweber-job run -q` agree.
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--env-file", metavar="PATH", default=default,
                        help="read variables from this file (default: .env in the working directory; "
                             "also AWEBER_ENV_FILE); the real environment wins")
    parser.add_argument("-v", "--verbose", action="count", default=0 if top else argparse.SUPPRESS,
                        help="more detail (-vv also shows HTTP connection lines); never shows secrets")
    parser.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="only warnings and errors: nothing on success, so cron mails only on trouble")
    parser.add_argument("--log-format", choices=("text", "json"), default=default,
                        help="log lines as text or one JSON object a line (default: AWEBER_LOG_FORMAT or text)")
    parser.add_argument("--connection", metavar="NAME", default=default,
                        help="the connection in the store to act on (default: AWEBER_CONNECTION or 'default'; "
                             "other names need AWEBER_STORE set to a PostgreSQL URL)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, as docs/design.md §2 describes it."""
    parser = _Parser(
        prog="aweber-job",
        description="Keep an AWeber OAuth 2 integration authorized and run its daily task.",
        epilog="Exit codes: 0 ok, 1 task failed, 64 usage, 65 token file invalid, 73 cannot write, "
               "75 temporary (try later), 76 bad token answer, 77 authorize again, 78 configuration.",
    )
    _add_global_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"aweber-job {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_global_options(p, top=False)
        return p

    run = command("run", "refresh the tokens, run the task, save its state (the default)")
    _add_run_options(run)
    fleet = run.add_argument_group("many connections (AWEBER_STORE is a PostgreSQL URL)")
    fleet.add_argument("--all", action="store_true",
                       help="run every due connection once (AWEBER_RUN_INTERVAL); other processes share the work")
    fleet.add_argument("--concurrency", type=int, metavar="N", default=None,
                       help="with --all: connections run at once in this process (default 4)")
    command("refresh", "refresh and save the tokens only")
    status = command("status", "show the token file and lock without contacting AWeber")
    status.add_argument("--json", action="store_true", help="print one JSON object for machines")
    login = command("login", "authorize once and write the token file")
    login.add_argument("--code", help="the authorization code or the whole redirect URL (else prompted)")
    login.add_argument("--redirect-uri", default=None,
                       help="redirect URI registered for the app (default: urn:ietf:wg:oauth:2.0:oob)")
    login.add_argument("--scope", default=None,
                       help="space-separated scopes (default: account.read list.read subscriber.read)")
    login.add_argument("--force", action="store_true", help="overwrite an existing token file")
    command("revoke", "revoke the refresh token at AWeber and remove the token file")
    command("tasks", "list the tasks that --task accepts")
    demo = command("demo", "run the whole cycle against a built-in AWeber stand-in on loopback")
    demo.add_argument("--keep", action="store_true", help="keep the demo's temporary directory")
    demo.add_argument("--oauth1", action="store_true",
                      help="show a legacy OAuth 1.0a integration (signed requests, nothing to refresh)")
    example = command("example", "print a deployment file with this installation's program path filled in")
    example.add_argument("kind", choices=list(EXAMPLES),
                         help="service and timer (systemd units), credential (the client-secret drop-in for "
                              "the service), instance-service, instance-timer and instance-credential (the same "
                              "as templates, one instance per connection: aweber-job@NAME), crontab (a cron "
                              "line) or env (every variable, documented)")
    store = command("store", "set up the PostgreSQL store (AWEBER_STORE) or re-encrypt it")
    store_sub = store.add_subparsers(dest="store_action", metavar="ACTION", parser_class=_Parser, required=True)
    store_sub.add_parser("init", help="create or upgrade the schema (idempotent); prints its version")
    store_sub.add_parser("rotate-key", help="re-encrypt every connection with the first AWEBER_STORE_KEY")
    connections = command("connections", "list, import or remove the connections in the PostgreSQL store")
    conn_sub = connections.add_subparsers(dest="connections_action", metavar="ACTION", parser_class=_Parser,
                                          required=True)
    listing = conn_sub.add_parser("list", help="one line per connection (no network)")
    listing.add_argument("--json", action="store_true", help="one JSON array of objects")
    importing = conn_sub.add_parser("import", help="put a token file into the store as NAME, then rename the file")
    importing.add_argument("name", metavar="NAME")
    importing.add_argument("file", metavar="FILE")
    importing.add_argument("--force", action="store_true", help="replace a connection of that name")
    removing = conn_sub.add_parser("remove", help="remove a connection that revoke revoked")
    removing.add_argument("name", metavar="NAME")
    removing.add_argument("--force", action="store_true", help="remove it even if it was not revoked")
    _add_run_options(parser, top_level=True)
    return parser


# The options of run that the top level also takes, for `aweber-job --task X` with no command.
RUN_OPTIONS = ("--task", "--output", "--format", "--since")


def _add_run_options(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    # Suppressed on `run` so that `aweber-job --task X run` is not undone by the subcommand's defaults.
    default: Any = None if top_level else argparse.SUPPRESS
    group = parser.add_argument_group("run options" + (" (when no command is given)" if top_level else ""))
    group.add_argument("--task", default=default, help="task name or package.module:callable (AWEBER_TASK)")
    group.add_argument("--output", metavar="PATH", default=default,
                       help="append task output to this file instead of stdout")
    group.add_argument("--format", choices=("jsonl", "csv"), default=default, help="output format (jsonl)")
    group.add_argument("--since", default=default, metavar="DURATION|DATE",
                       help="first-run look-back, e.g. 24h, 7d, 2026-11-01 (default 24h)")


def read_env_file(env_file: str | None, environ: Mapping[str, str]) -> tuple[Path | None, dict[str, str]]:
    """The env file in use (None when there is none) and its values; ConfigError for a missing or unreadable one."""
    from pathlib import Path

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
    import stat

    paths = [env_file] if env_file is not None else []
    secret_file = settings.source.get("AWEBER_CLIENT_SECRET_FILE")
    if secret_file and settings.client_secret is not None:
        from pathlib import Path

        paths.append(Path(secret_file))
    for path in paths:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue
        if mode & stat.S_IROTH:
            _log().warning(
                "%s holds the client secret and every user on this machine can read it (mode %04o): chmod 600 %s",
                path, mode, path,
            )


def _warn_about_unknown_variables(names: Sequence[str], origins: _Origins) -> None:
    """Name each ``AWEBER_`` variable the job does not read, with the known name it is closest to."""
    from job.config import misspelled_variables

    for name, closest in misspelled_variables(names):
        advice = f"; did you mean {closest}?" if closest else " (.env.example lists every one)"
        _log().warning("%s (in %s) is not a variable aweber-job reads%s", name, origins.of(name), advice)


def make_session() -> requests.Session:
    """One HTTP session for the run, naming the job in its User-Agent."""
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = f"aweber-job/{__version__} (+python-requests {requests.__version__})"
    return session


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
        import errno

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
            import errno

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
        _log().error("cannot write to standard output: its last lines could not be written")
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
        _log().error("%s", exc)
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


def _dispatch(args: argparse.Namespace, command: str, out: IO[str], env_in: dict[str, str],
              stdin: IO[str] | None) -> int:
    """The command, with every JobError turned into one line and its exit code."""
    connection: str | None = None  # the database connection acted on, once known
    try:
        _refuse_misplaced_run_options(args, command)
        if getattr(args, "connection", None) is not None and command not in CONNECTION_COMMANDS:
            raise UsageError(f"--connection is an option of {', '.join(CONNECTION_COMMANDS)}, not of {command}")
        if command == "tasks":
            return _cmd_tasks(out)
        if command == "example":
            return _cmd_example(args.kind, out)
        if command == "demo":
            from job.commands.demo import run_demo

            demo_code: int = run_demo(out, run_cli=main, keep=args.keep, verbose=args.verbose, quiet=args.quiet,
                                     oauth1=args.oauth1)
            return demo_code
        env_file, file_values = read_env_file(args.env_file, env_in)
        origins = _Origins(env_file, env_in)
        _warn_about_unknown_variables([*file_values, *(name for name in env_in if name not in file_values)], origins)
        from job.config import load_settings

        settings = load_settings({**file_values, **env_in})
        _warn_about_readable_secrets(env_file if file_values.get("AWEBER_CLIENT_SECRET") else None, settings)
        settings = _choose_connection(settings, args, command)
        if settings.store_url is not None and command in CONNECTION_COMMANDS:
            connection = settings.connection
        from job.shutdown import Shutdown

        # From here on tokens may be spent or held: TERM, INT and HUP take the one graceful path (job/shutdown.py).
        shutdown = Shutdown(settings.shutdown_grace_seconds)
        with shutdown.handling_signals():
            return _run_command(args, command, out, settings, origins, stdin, shutdown)
    except JobError as exc:
        _report(naming_the_connection(exc, connection))
        return exc.exit_code
    except KeyboardInterrupt:
        _log().error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback for the operator; -v shows it
        _log().error("unexpected error: %s: %s", type(exc).__name__, exc)
        _log().debug("where it happened", exc_info=True)
        return EXIT_TASK_FAILED


def _run_command(args: argparse.Namespace, command: str, out: IO[str], settings: Settings, origins: _Origins,
                 stdin: IO[str] | None, shutdown: Any) -> int:
    """The commands that act on tokens, with the stop signals handled."""
    if command in ("store", "connections"):
        from job.commands.connections import run_store_command

        store_code: int = run_store_command(settings, args, out)
        return store_code
    if command == "status":
        return _cmd_status(settings, out, as_json=args.json)
    if command == "login":
        if settings.store_url is not None:
            from job.commands.connections import login_connection as run_login
        else:
            from job.commands.login import run_login

        login_code: int = run_login(
            settings, make_session(), code=args.code, redirect_uri=args.redirect_uri,
            scope=args.scope, force=args.force, stdin=stdin or sys.stdin, stdout=out,
        )
        return login_code
    if command == "revoke":
        return _cmd_revoke(settings)
    return _cmd_run(settings, args, out, origins, shutdown, refresh_only=(command == "refresh"))


def _choose_connection(settings: Settings, args: argparse.Namespace, command: str) -> Settings:
    """The settings for the connection ``--connection`` (else AWEBER_CONNECTION) names.

    UsageError (64) for a name that cannot be one, for --connection on a command that acts on no
    single connection, and for any connection but ``default`` when the store is the token file.
    """
    import dataclasses

    from job.config import CONNECTION_NAME, CONNECTION_NAME_RULE, DEFAULT_CONNECTION

    name = getattr(args, "connection", None)
    if name is not None:
        if not CONNECTION_NAME.match(name):
            raise UsageError(f"--connection must be a connection name of {CONNECTION_NAME_RULE}, got {name!r}")
        settings = dataclasses.replace(settings, connection=name)
    if settings.store_url is None and settings.connection != DEFAULT_CONNECTION and command in CONNECTION_COMMANDS:
        given = "--connection" if name is not None else "AWEBER_CONNECTION"
        raise UsageError(
            f"{given} {settings.connection}: the store is the token file (AWEBER_STORE=file), which holds one "
            f"connection, '{DEFAULT_CONNECTION}'; set AWEBER_STORE to a PostgreSQL URL to keep many"
        )
    if settings.store_url is None and command in ("store", "connections"):
        raise UsageError(
            f"{command} acts on a PostgreSQL store, and AWEBER_STORE is 'file' (the token file); set AWEBER_STORE "
            "to a postgresql:// URL"
        )
    return settings


def _refuse_misplaced_run_options(args: argparse.Namespace, command: str) -> None:
    """UsageError (64) for a run option given to another command, which would silently ignore it."""
    if command == "run":
        return
    for flag in RUN_OPTIONS:
        if getattr(args, flag.lstrip("-"), None) is not None:
            raise UsageError(f"{flag} is an option of run, not of {command} (see: aweber-job run --help)")


def _report(exc: JobError) -> None:
    """One line on stderr for the operator; CRITICAL when fresh tokens exist only in memory."""
    import logging

    from job.errors import TokenNotSavedError

    level = logging.CRITICAL if isinstance(exc, TokenNotSavedError) else logging.ERROR
    _log().log(level, "%s", exc, extra={"exit_code": exc.exit_code})


def _cmd_tasks(out: IO[str]) -> int:
    from job.tasks import known_tasks

    for name, description in known_tasks():
        out.write(f"{name}\t{description}\n" if description else f"{name}\n")
    out.flush()
    return EXIT_OK


def _cmd_example(kind: str, out: IO[str]) -> int:
    from job.deployment import SERVICE_KINDS, example_text, fill_in, hidden_from_the_service, running_program

    program = running_program(sys.argv[0], sys.executable)
    out.write(fill_in(example_text(kind), program))
    out.flush()
    if kind in SERVICE_KINDS:
        for path, top in hidden_from_the_service(program, sys.executable):
            _log().warning(
                "%s is under %s, which the service's ProtectHome=yes hides: the service would not start (203/EXEC); "
                "install into a venv under /opt made with /usr/bin/python3 (see the README)",
                path, top,
            )
    return EXIT_OK


def _cmd_run_all(settings: Settings, args: argparse.Namespace, options: Any, out: IO[str], monitor: Any,
                 shutdown: Any) -> int:
    """``run --all``: every due connection, once (job/run/fleet.py), with one start and one end ping."""
    from job.run.fleet import DEFAULT_CONCURRENCY, MAX_CONCURRENCY, FleetOutcome, run_all

    if not getattr(args, "all", False):
        raise UsageError("--concurrency goes with run --all")
    concurrency = args.concurrency if args.concurrency is not None else DEFAULT_CONCURRENCY
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be 1 to {MAX_CONCURRENCY}, got {concurrency}")
    if getattr(args, "connection", None) is not None:
        raise UsageError("run --all runs every due connection; --connection names one: give one or the other")
    outcome = FleetOutcome()
    monitor.start()
    try:
        if settings.store_url is None:
            # The token file is the one connection: --all runs it, as a plain run would.
            from job.run.single import run_cycle

            with shutdown.handling_signals():
                run_cycle(settings, make_session(), options, stdout=out, outcome=outcome, shutdown=shutdown)
        else:
            run_all(settings, options, concurrency=concurrency, stdout=out, make_session=make_session,
                    outcome=outcome, shutdown=shutdown)
    except JobError as exc:
        _report(exc)
        outcome.exit_code = exc.exit_code
    except Exception as exc:  # noqa: BLE001 - an unexpected bug still ends in one line and exit 1
        _log().error("unexpected error: %s: %s", type(exc).__name__, exc)
        _log().debug("where it happened", exc_info=True)
        outcome.exit_code = EXIT_TASK_FAILED
    monitor.finish(outcome)
    return outcome.exit_code


def _cmd_status(settings: Settings, out: IO[str], *, as_json: bool) -> int:
    if settings.store_url is not None:
        from job.commands.connections import connection_status

        db_code: int = connection_status(settings, out, as_json=as_json)
        return db_code
    from job.commands.status import collect_status, render_status

    report = collect_status(settings)
    out.write(render_status(report, as_json=as_json))
    out.flush()
    return report.exit_code


def _cmd_revoke(settings: Settings) -> int:
    if settings.store_url is not None:
        from job.commands.connections import revoke_connection

        db_code: int = revoke_connection(settings, make_session())
        return db_code
    from job.commands.login import run_revoke

    revoke_code: int = run_revoke(settings, make_session())
    return revoke_code


def _cmd_run(
    settings: Settings, args: argparse.Namespace, out: IO[str], origins: _Origins, shutdown: Any, *,
    refresh_only: bool,
) -> int:
    """The whole cycle of docs/design.md §1 (or steps 1–5 for ``refresh``), with monitoring around it."""
    from job.run.monitor import Monitor
    from job.run.single import RunOptions, RunOutcome, run_cycle

    task_option = getattr(args, "task", None)
    if task_option:
        task_origin = "--task"
    elif settings.source.get("AWEBER_TASK"):
        task_origin = f"AWEBER_TASK in {origins.of('AWEBER_TASK')}"
    else:
        task_origin = "default"
    options = RunOptions(
        task=None if refresh_only else (task_option or settings.task),
        task_origin=task_origin,
        output=getattr(args, "output", None),
        fmt=getattr(args, "format", None) or "jsonl",
        since=getattr(args, "since", None),
    )
    session = make_session()
    monitor = Monitor(settings, session)
    if getattr(args, "all", False) or getattr(args, "concurrency", None) is not None:
        return _cmd_run_all(settings, args, options, out, monitor, shutdown)
    outcome = RunOutcome()
    store = None
    if settings.store_url is not None:
        from job.stores import connection_store

        # The outcome is recorded and the lease released in one statement after the run (finish).
        store = connection_store(settings, finish_on_close=True, shutdown=shutdown)
    with shutdown.handling_signals():
        monitor.start()
        try:
            run_cycle(settings, session, options, stdout=out, outcome=outcome, store=store, shutdown=shutdown)
        except JobError as exc:
            _report(naming_the_connection(exc, settings.connection if settings.store_url is not None else None))
            outcome.exit_code = exc.exit_code
        except Exception as exc:  # noqa: BLE001 - an unexpected bug still ends in one line and exit 1
            _log().error("unexpected error: %s: %s", type(exc).__name__, exc)
            _log().debug("where it happened", exc_info=True)
            outcome.exit_code = EXIT_TASK_FAILED
        if store is not None:
            # A run turned away (another holds the lease, the store is down) ran nothing worth recording.
            finish = getattr(store, "finish")  # noqa: B009 - the database store's own call, not the seam's
            finish(outcome.exit_code if outcome.held_connection else None, settings.run_interval_seconds)
        # One connection of the database store: its own Pushgateway group, so runs of others do not replace it.
        monitor.finish(outcome, connection=settings.connection if settings.store_url is not None else None)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
