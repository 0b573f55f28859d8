"""The command line's words: the parser of every command and option, and the checks of what was given together.

Kept apart from :mod:`job.cli` (the wiring and exit codes), which imports it first thing; it
imports nothing heavy, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from job import __version__
from job.config import CONNECTION_NAME, CONNECTION_NAME_RULE, DEFAULT_CONNECTION
from job.deployment import EXAMPLES
from job.errors import UsageError

if TYPE_CHECKING:
    from job.config import Settings

COMMANDS = ("run", "refresh", "status", "login", "revoke", "tasks", "demo", "example", "store", "connections",
            "sandbox", "state", "tap")
# The commands that act on one connection, and so take --connection.
CONNECTION_COMMANDS = ("run", "refresh", "status", "login", "revoke", "state")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 64) instead of exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


# Said under each command's help instead of the options themselves, which the top-level help shows once.
GLOBAL_OPTIONS_NOTE = ("The global options --env-file, -v, -q and --log-format work after the command too "
                       "(see: aweber-job --help).")


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool, connection: bool = True) -> None:
    # On subcommands the defaults are suppressed so `aweber-job -q run` and `aweber-job run -q` agree, and so
    # is their help: the top level shows them once. --connection is shown only where it means something;
    # elsewhere it is still parsed, so the refusal names the commands that take it.
    default: Any = None if top else argparse.SUPPRESS
    shown = (lambda text: text) if top else (lambda text: argparse.SUPPRESS)
    parser.add_argument("--env-file", metavar="PATH", default=default,
                        help=shown("read variables from this file (default: .env in the working directory; "
                                   "also AWEBER_ENV_FILE); the real environment wins"))
    parser.add_argument("-v", "--verbose", action="count", default=0 if top else argparse.SUPPRESS,
                        help=shown("more detail (-vv also shows HTTP connection lines); never shows secrets"))
    parser.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                        help=shown("only warnings and errors: nothing on success, so cron mails only on trouble"))
    parser.add_argument("--log-format", choices=("text", "json"), default=default,
                        help=shown("log lines as text or one JSON object a line (default: AWEBER_LOG_FORMAT or "
                                   "text)"))
    which = f" with {', '.join(CONNECTION_COMMANDS)}" if top else ""
    parser.add_argument("--connection", metavar="NAME", default=default,
                        help=(f"the connection in the store to act on{which} (default: AWEBER_CONNECTION or "
                              "'default'; other names need AWEBER_STORE set to a PostgreSQL URL)") if connection
                        else argparse.SUPPRESS)


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
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=GLOBAL_OPTIONS_NOTE)
        _add_global_options(p, top=False, connection=name in CONNECTION_COMMANDS)
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
    _action(store_sub, "init", "create or upgrade the schema (idempotent); prints its version",
           ": the tables of the PostgreSQL store AWEBER_STORE names, in the schema aweber_job. Run it once before "
           "the first connection and after each upgrade of aweber-job; it is safe to repeat.")
    _action(store_sub, "rotate-key", "re-encrypt every connection with the first AWEBER_STORE_KEY",
           ", sealing every row anew: put the new key first everywhere, run this, then drop the old key.")
    connections = command("connections", "list, import or remove the connections in the PostgreSQL store")
    conn_sub = connections.add_subparsers(dest="connections_action", metavar="ACTION", parser_class=_Parser,
                                          required=True)
    listing = _action(conn_sub, "list", "one line per connection (no network)")
    listing.add_argument("--json", action="store_true", help="one JSON array of objects")
    importing = _action(conn_sub, "import", "put a token file into the store as NAME (or every NAME.json of --dir "
                        "DIR), with its task state, then rename the file",
                        " to FILE.imported-<UTC time>, so one refresh token is never used from two places. The "
                        "file's lock is held meanwhile, and a save an earlier run left unfinished is put in place "
                        "first.")
    importing.add_argument("name", metavar="NAME", nargs="?",
                           help=f"the connection's name in the store ({CONNECTION_NAME_RULE}); runs then name it "
                                "with --connection NAME")
    importing.add_argument("file", metavar="FILE", nargs="?",
                           help="the token file to import (either shape aweber-job login or AWeber's example "
                                "writes), or a rescue file a run left")
    importing.add_argument("--force", action="store_true", help="replace a connection of that name")
    importing.add_argument("--dir", metavar="DIR", help="import every NAME.json token file in DIR as connection NAME")
    importing.add_argument("--state", metavar="FILE",
                           help="the task state to import (default: the state file a run of FILE keeps, if any)")
    removing = _action(conn_sub, "remove", "remove a connection that revoke revoked",
                       "; --force removes one that was not revoked (its refresh token stays valid at AWeber).")
    removing.add_argument("name", metavar="NAME", help="the connection's name, as connections list shows it")
    removing.add_argument("--force", action="store_true", help="remove it even if it was not revoked")
    _add_sandbox_and_state(command)
    _add_tap(command)
    _add_run_options(parser, top_level=True)
    return parser


def _add_sandbox_and_state(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """``sandbox`` (the stand-in AWeber, served until stopped) and ``state show|rewind`` (the task's watermarks)."""
    sandbox = command("sandbox", "serve the AWeber stand-in on loopback until stopped, to try the commands on; "
                                 "prints the variables to put in .env")
    sandbox.add_argument("--port", type=int, default=0, metavar="N",
                         help="listen on 127.0.0.1:N (default: a free port)")
    sandbox.add_argument("--confidential", action="store_true",
                         help="a confidential client with a client secret (default: a public client, PKCE)")
    state = command("state", "show the task's saved state, or set its watermarks back so the next run reports again")
    actions = state.add_subparsers(dest="state_action", metavar="ACTION", parser_class=_Parser, required=True)
    show = actions.add_parser("show", help="per list: the watermark and what else the state holds (no network)")
    show.add_argument("--json", action="store_true", help="the saved state as one JSON object")
    rewind = actions.add_parser("rewind", help="set the watermarks back, under the run's lock or lease")
    rewind.add_argument("--since", dest="rewind_since", required=True, metavar="DURATION|DATE",
                        help="where the next run reports from: 24h, 7d, 2026-11-01 or an RFC 3339 time")
    rewind.add_argument("--list", dest="rewind_list", metavar="ID", help="only this list (default: every list)")
    for action in (show, rewind):
        _add_global_options(action, top=False)
        action.add_argument("--task", dest="state_task", metavar="NAME",
                            help="the task whose state it is (default: AWEBER_TASK or new-subscribers)")


def _add_tap(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """``tap``: the job as a Singer tap (also the program tap-aweber), with Singer's options."""
    tap = command("tap", "run as a Singer tap: Singer messages on stdout, for Meltano or any Singer target "
                         "(also the program tap-aweber)")
    tap.add_argument("--config", metavar="FILE",
                     help="JSON object of settings: the variables lower-cased without AWEBER_ (client_id, "
                          "token_file or store...), and start_date; the environment and .env play no part")
    tap.add_argument("--state", metavar="FILE", help="the last STATE message's value from the run before")
    tap.add_argument("--catalog", "--properties", dest="catalog", metavar="FILE",
                     help="the streams and fields to emit (the selected metadata); default: all")
    tap.add_argument("--discover", action="store_true", help="print the catalog and exit")
    tap.add_argument("--about", action="store_true", help="print the tap's name, version, capabilities and settings")
    tap.add_argument("--format", dest="about_format", choices=("text", "json", "markdown"), default=None,
                     help="with --about: text (default), json or markdown")


def _action(parent: Any, name: str, help_text: str, more: str = "") -> argparse.ArgumentParser:
    """An action of store or connections, its help line and, in its own --help, that line and ``more``."""
    made: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text + more,
                                                      epilog=GLOBAL_OPTIONS_NOTE)
    _add_global_options(made, top=False, connection=False)
    return made


# The options of run that the top level also takes, for `aweber-job --task X` with no command.
RUN_OPTIONS = ("--task", "--output", "--format", "--since")


def _add_run_options(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    # Suppressed on `run` so that `aweber-job --task X run` is not undone by the subcommand's defaults.
    default: Any = None if top_level else argparse.SUPPRESS
    group = parser.add_argument_group("run options" + (" (when no command is given)" if top_level else ""))
    group.add_argument("--task", default=default,
                       help="task name, package.module:callable or ./file.py:callable (AWEBER_TASK)")
    group.add_argument("--output", metavar="PATH", default=default,
                       help="append task output to this file instead of stdout")
    group.add_argument("--format", choices=("jsonl", "csv"), default=default, help="output format (jsonl)")
    group.add_argument("--since", default=default, metavar="DURATION|DATE",
                       help="first-run look-back, e.g. 24h, 7d, 2026-11-01 (default 24h)")


def refuse_misplaced_run_options(args: argparse.Namespace, command: str) -> None:
    """UsageError (64) for a run option given to another command, which would silently ignore it."""
    if command == "run":
        return
    for flag in RUN_OPTIONS:
        if getattr(args, flag.lstrip("-"), None) is not None:
            raise UsageError(f"{flag} is an option of run, not of {command} (see: aweber-job run --help)")


def choose_connection(settings: Settings, args: argparse.Namespace, command: str) -> Settings:
    """The settings for the connection ``--connection`` (else AWEBER_CONNECTION) names.

    UsageError (64) for a name that cannot be one, for --connection on a command that acts on no
    single connection, and for any connection but ``default`` when the store is the token file.
    """
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
