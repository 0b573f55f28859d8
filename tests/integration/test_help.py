"""The help a person reads: each command's --help shows its own options, --connection only where it means
something, the global options once at the top; and a first bare `aweber-job` says what to do first."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support.jobs import JobFiles, run_job

GLOBAL_FLAGS = ("--env-file", "--verbose", "--quiet", "--log-format")
ONE_CONNECTION = ("run", "refresh", "status", "login", "revoke")
NO_CONNECTION = ("tasks", "demo", "example", "store", "connections", "sandbox")


def help_of(*argv: str) -> str:
    result = run_job([*argv, "--help"], {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_top_level_help_shows_the_global_options_once() -> None:
    """Each global option is described once, in the top-level help (its usage line names it too)."""
    text = help_of()
    for flag in (*GLOBAL_FLAGS, "--connection"):
        assert len(re.findall(rf"^  (?:-\w, )?{flag}\b", text, flags=re.MULTILINE)) == 1, flag


@pytest.mark.parametrize("command", [*ONE_CONNECTION, *NO_CONNECTION])
def test_a_command_help_shows_its_own_options_not_the_global_ones(command: str) -> None:
    """The four global options are not repeated under every command; one line says they work there too."""
    text = help_of(command)
    for flag in GLOBAL_FLAGS:
        assert flag not in text.replace("--env-file, -v, -q and --log-format", ""), flag
    assert "The global options --env-file, -v, -q and --log-format work after the command too" in " ".join(
        text.split())
    assert ("--connection NAME" in text) == (command in ONE_CONNECTION)


@pytest.mark.parametrize("argv", [["-q", "tasks"], ["tasks", "-q"], ["tasks", "--log-format", "json", "-v"],
                                  ["--env-file", "/dev/null", "tasks"], ["tasks", "--env-file", "/dev/null"]])
def test_global_options_still_work_before_and_after_a_command(argv: list[str]) -> None:
    result = run_job(argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert result.returncode == 0, result.stderr
    assert "new-subscribers" in result.stdout


@pytest.mark.parametrize("argv", [["tasks", "--connection", "acme"], ["--connection", "acme", "tasks"],
                                  ["example", "env", "--connection", "acme"]])
def test_connection_on_a_command_that_takes_none_still_says_which_do(job: JobFiles, argv: list[str]) -> None:
    result = run_job(argv, job.env())
    assert result.returncode == 64
    assert result.stderr == ("aweber-job: error: --connection is an option of run, refresh, status, login, revoke, "
                             f"state, not of {argv[0] if argv[0] != '--connection' else argv[2]}\n")


@pytest.mark.parametrize(("argv", "words"), [
    (["connections", "import"], ["put a token file into the store as NAME", "FILE.imported-<UTC time>",
                                 "NAME the connection's name in the store", "FILE the token file to import"]),
    (["store", "init"], ["create or upgrade the schema", "safe to repeat"]),
    (["connections", "remove"], ["remove a connection that revoke revoked", "NAME        the connection's name"]),
])
def test_store_and_connections_actions_have_descriptions(argv: list[str], words: list[str]) -> None:
    text = help_of(*argv)
    flat = " ".join(text.split())
    for said in words:
        assert " ".join(said.split()) in flat, said


def test_a_bare_first_run_says_what_to_do_first(tmp_path: Path) -> None:
    """No client id, no token file, no store: a bare `aweber-job` is one line naming login, sandbox and --help, 78."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    result = run_job([], env, cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    token_file = tmp_path / ".local" / "state" / "aweber-job" / "tokens.json"
    assert result.stderr == (
        f"aweber-job: error: configuration error: nothing is configured yet (no AWEBER_CLIENT_ID, no token file at "
        f"{token_file}): set AWEBER_CLIENT_ID and authorize with aweber-job login, try it without an account with "
        "aweber-job sandbox, or see aweber-job --help\n")
    assert not (tmp_path / ".local").exists()


def test_a_bare_run_with_a_client_id_still_runs_as_before(job: JobFiles) -> None:
    """With a client id configured, a bare `aweber-job` is `run`: here it refreshes and runs the default task."""
    job.write_tokens()
    result = run_job(["--task", "noop"], job.env())
    assert result.returncode == 0, result.stderr
    result = run_job([], job.env(AWEBER_TOKEN_FILE=str(job.root / "missing" / "tokens.json")))
    assert result.returncode == 65, result.stderr
    assert "token file directory" in result.stderr
