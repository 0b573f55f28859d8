"""Bad token files, `.env` files, variables and command lines, from tables and from Hypothesis: one clear
error line and the right exit code (64 usage, 65 token file, 78 configuration), never a traceback, and
the token file byte for byte as it was. In-process through ``job.cli.main`` (a process adds nothing to
parsing), plus a handful through real processes."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from dotenv import dotenv_values
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from job.cli import main
from tests.survival.harness import SECRETS, SOAK, TALLY, Workspace, error_lines, file_hash
from tests.survival.oracle import setting_refused, token_bytes_valid

CLOSED_PORT = "http://127.0.0.1:9"
REAL_LOOKING_TOKEN = "bad-input-refresh-token-7c1d9e"
# ASCII JSON whose refresh token json reads with a lone surrogate in front: no UTF-8 file can hold that string.
LONE_SURROGATE_TOKENS = b'{"access_token": "a", "refresh_token": "\\ud800' + REAL_LOOKING_TOKEN.encode() + b'"}'
VALID_TOKENS = {"access_token": "bad-input-access-token-3a8f20", "refresh_token": REAL_LOOKING_TOKEN,
                "token_type": "bearer", "expires_at": 4102444800}
# Planted in every Home's token file: no output may show them (the tokens, not "bearer" or the expiry).
SECRETS.add(VALID_TOKENS["access_token"], VALID_TOKENS["refresh_token"])
EXAMPLES = 200 if SOAK else 40
HYPOTHESIS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not SOAK,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Variables a generated `.env` or environment may set: none of them reaches the network or writes a file.
SAFE_TO_VARY = (
    "AWEBER_LOCK_TIMEOUT", "AWEBER_HTTP_TIMEOUT", "AWEBER_RATE_LIMIT", "AWEBER_REFRESH_LEEWAY", "AWEBER_RUN_TIMEOUT",
    "AWEBER_LOG_FORMAT", "AWEBER_TASK", "AWEBER_ACCOUNT_ID", "AWEBER_LIST_IDS", "AWEBER_CLIENT_SECRET",
)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """The error and critical lines, in the text or the JSON log format."""
        return [line for line in self.stderr.splitlines()
                if ": error:" in line or ": critical:" in line or _json_level(line) in ("error", "critical")]


def _json_level(line: str) -> object:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("level") if isinstance(record, dict) else None


class Home:
    """A directory with a token file; every call of the job here is offline (a closed port)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.token_file = root / "tokens.json"
        SECRETS.add_root(root)

    def environ(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "AWEBER_CLIENT_ID": "cid-bad-input",
            "AWEBER_TOKEN_FILE": str(self.token_file),
            "AWEBER_STATE_DIR": str(self.root),
            "AWEBER_TOKEN_URL": f"{CLOSED_PORT}/oauth2/token",
            "AWEBER_AUTHORIZE_URL": f"{CLOSED_PORT}/oauth2/authorize",
            "AWEBER_REVOKE_URL": f"{CLOSED_PORT}/oauth2/revoke",
            "AWEBER_API_URL": f"{CLOSED_PORT}/1.0",
            "AWEBER_RETRY_DEADLINE": "0",
            "AWEBER_PING_URL": "",
            "AWEBER_METRICS_FILE": "",
            "AWEBER_CLIENT_SECRET_FILE": "",
            "AWEBER_ENV_FILE": "",
        }
        env.update(extra)
        return env

    def write_valid_tokens(self) -> None:
        self.token_file.write_text(json.dumps(VALID_TOKENS) + "\n", encoding="utf-8")

    def call(self, argv: list[str], environ: Mapping[str, str]) -> Outcome:
        """``job.cli.main`` in-process, from this directory, with stdout and stderr captured."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.chdir(self.root):
            code = main(argv, dict(environ), out, io.StringIO())
        outcome = Outcome(code, out.getvalue(), err.getvalue())
        SECRETS.add_output(f"in-process {argv[:4]} -> {code}", outcome.stdout + outcome.stderr)
        return outcome

    def temporaries(self) -> list[str]:
        return [p.name for p in self.root.iterdir() if ".tmp-" in p.name]


def check(scenario: str, home: Home, outcome: Outcome, expected: int | frozenset[int], before: str | None) -> None:
    """The shared verdict: the expected code (or one of them), one error line unless 0, no traceback,
    nothing changed."""
    with TALLY.attempt(scenario):
        TALLY.note(scenario, f"exit {outcome.code}")
        if isinstance(expected, frozenset):
            assert outcome.code in expected, outcome.stderr
        else:
            assert outcome.code == expected, outcome.stderr
        assert "Traceback" not in outcome.stderr + outcome.stdout
        assert "unexpected error" not in outcome.stderr, outcome.stderr
        if outcome.code != 0:
            assert len(outcome.error_lines) == 1, outcome.stderr
        assert file_hash(home.token_file) == before
        assert home.temporaries() == []
        assert REAL_LOOKING_TOKEN not in outcome.stderr + outcome.stdout


def expected_for_token_file(data: bytes) -> int:
    """65 when the suite's own token-file rules (tests/survival/oracle.py) refuse the bytes; else the
    offline refresh fails: 75."""
    return 75 if token_bytes_valid(data) else 65


@contextlib.contextmanager
def fresh_home(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Home]:
    yield Home(tmp_path_factory.mktemp(name))


# -- token files ------------------------------------------------------------------------------------

TOKEN_FILE_TABLE: dict[str, Callable[[Path], None]] = {
    "UTF-8 byte-order mark": lambda p: p.write_bytes(b"\xef\xbb\xbf" + json.dumps(VALID_TOKENS).encode()),
    "100 000 nested arrays": lambda p: p.write_bytes(b"[" * 100_000),
    "50 000 nested objects": lambda p: p.write_bytes(b'{"a":' * 50_000),
    "expires_at is 1e999": lambda p: p.write_bytes(
        b'{"access_token": "a", "refresh_token": "bad-input-refresh-token-7c1d9e", "expires_at": 1e999}'),
    "expires_at is NaN": lambda p: p.write_bytes(
        b'{"access_token": "a", "refresh_token": "bad-input-refresh-token-7c1d9e", "expires_at": NaN}'),
    "expires_at is true": lambda p: p.write_bytes(
        b'{"access_token": "a", "refresh_token": "bad-input-refresh-token-7c1d9e", "expires_at": true}'),
    "access_token is null": lambda p: p.write_bytes(
        b'{"access_token": null, "refresh_token": "bad-input-refresh-token-7c1d9e"}'),
    "refresh_token is empty": lambda p: p.write_bytes(b'{"access_token": "a", "refresh_token": ""}'),
    "refresh_token is a list": lambda p: p.write_bytes(
        b'{"access_token": "a", "refresh_token": ["bad-input-refresh-token-7c1d9e"]}'),
    "token is a string": lambda p: p.write_bytes(b'{"client_id": "c", "token": "bad-input-refresh-token-7c1d9e"}'),
    "token lacks refresh_token": lambda p: p.write_bytes(b'{"client_id": "c", "token": {"access_token": "a"}}'),
    "client_id is a number": lambda p: p.write_bytes(
        b'{"client_id": 7, "token": {"access_token": "a", "refresh_token": "bad-input-refresh-token-7c1d9e"}}'),
    "trailing garbage": lambda p: p.write_bytes(json.dumps(VALID_TOKENS).encode() + b" }{ trailing"),
    "a lone brace": lambda p: p.write_bytes(b"{"),
    "NUL bytes": lambda p: p.write_bytes(b"\0" * 64),
    "only whitespace": lambda p: p.write_bytes(b" \n\t\n"),
    "a JSON string": lambda p: p.write_bytes(b'"bad-input-refresh-token-7c1d9e"'),
    "Latin-1 text": lambda p: p.write_bytes('{"access_token": "é", "refresh_token": "ß"}'.encode("latin-1")),
    "a named pipe": lambda p: os.mkfifo(p),
    "a dangling symlink": lambda p: p.symlink_to(p.with_name("nowhere.json")),
    "a symlink loop": lambda p: p.symlink_to(p),
    "just over 1 MiB": lambda p: p.write_bytes(
        b'{"access_token": "' + b"a" * (1024 * 1024) + b'", "refresh_token": "r"}'),
    "refresh_token holds a lone surrogate": lambda p: p.write_bytes(LONE_SURROGATE_TOKENS),
}


@pytest.mark.parametrize("case", list(TOKEN_FILE_TABLE))
def test_bad_token_file_from_the_table(tmp_path_factory: pytest.TempPathFactory, case: str) -> None:
    """Each bad token file: `refresh` exits 65 with one line naming the file, the file untouched."""
    with fresh_home(tmp_path_factory, "badtoken") as home:
        TOKEN_FILE_TABLE[case](home.token_file)
        before = file_hash(home.token_file)
        outcome = home.call(["refresh"], home.environ())
        check("bad input: token files (table)", home, outcome, 65, before)
        assert str(home.token_file) in outcome.error_lines[0]


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
token_keys = st.sampled_from(["access_token", "refresh_token", "expires_at", "expires_in", "token_type",
                              "token", "client_id", "client_secret", "scope"]) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(token_keys, inner, max_size=6), max_leaves=12)
# Mostly-right values beside arbitrary ones, so valid and invalid documents are both common.
string_or_any = st.text(max_size=12) | json_values
number_or_any = st.integers() | st.floats() | st.booleans() | st.none() | json_values
token_like = st.fixed_dictionaries(
    {"access_token": string_or_any, "refresh_token": string_or_any},
    optional={"expires_at": number_or_any, "expires_in": number_or_any, "token_type": string_or_any,
              "scope": string_or_any | st.lists(st.text(max_size=6), max_size=3), "token": json_values},
)
valid_fields = st.fixed_dictionaries(
    {"access_token": st.text(max_size=12), "refresh_token": st.text(min_size=1, max_size=12)},
    optional={"expires_at": st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
              "expires_in": st.integers(0, 10**6), "token_type": st.text(max_size=8),
              "scope": st.text(max_size=12) | st.lists(st.text(max_size=6), max_size=3)},
)
odd_values = st.none() | st.booleans() | st.integers() | st.sampled_from([math.nan, math.inf, -math.inf, 1.5]) \
    | st.text(max_size=6) | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                 max_size=2)


def one_field_replaced(fields: dict[str, object], key: str, value: object, nested: bool) -> bytes:
    """A valid document with one field set to an arbitrary value (maybe still valid), flat or nested."""
    document = {**fields, key: value}
    return json.dumps({"client_id": "c", "token": document} if nested else document).encode()


near_valid_token_files = st.builds(
    one_field_replaced, valid_fields,
    st.sampled_from(["access_token", "refresh_token", "expires_at", "expires_in", "token_type", "scope"]),
    odd_values, st.booleans(),
)
token_file_bytes = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | token_like.map(lambda v: json.dumps(v).encode())
    | st.builds(lambda v, cid, secret: json.dumps({"client_id": cid, "client_secret": secret, "token": v}).encode(),
                token_like, string_or_any, string_or_any)
    | token_like.map(lambda v: json.dumps({"client_id": "c", "token": v}).encode())
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
)


@HYPOTHESIS
@given(data=token_file_bytes)
def test_generated_token_files(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    """Whatever the bytes, `refresh` exits 65 exactly when the written-out token-file rules refuse them
    (else 75, offline), with one line and no traceback, and the file is left byte for byte."""
    home = Home(tmp_path_factory.mktemp("gentoken"))
    home.token_file.write_bytes(data)
    before = file_hash(home.token_file)
    expected = expected_for_token_file(data)
    outcome = home.call(["refresh"], home.environ())
    check("bad input: token files (Hypothesis)", home, outcome, expected, before)


@HYPOTHESIS
@given(data=near_valid_token_files)
def test_generated_near_valid_token_files(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    """A valid token file with one field set to an arbitrary value: `refresh` exits 65 exactly when the
    written-out rules refuse that value (else 75, offline), the file left byte for byte."""
    home = Home(tmp_path_factory.mktemp("gentoken"))
    home.token_file.write_bytes(data)
    before = file_hash(home.token_file)
    outcome = home.call(["refresh"], home.environ())
    check("bad input: token files (Hypothesis)", home, outcome, expected_for_token_file(data), before)


# -- .env files and variables -----------------------------------------------------------------------

ENV_FILE_TABLE: dict[str, tuple[bytes, str]] = {
    "not UTF-8": (b"AWEBER_HTTP_TIMEOUT=\xff\xfe5\n", "not UTF-8"),
    "timeout is not a number": (b"AWEBER_HTTP_TIMEOUT=abc\n", "AWEBER_HTTP_TIMEOUT"),
    "timeout is zero": (b"AWEBER_HTTP_TIMEOUT=0\n", "AWEBER_HTTP_TIMEOUT"),
    "timeout is nan": (b"AWEBER_HTTP_TIMEOUT=nan\n", "AWEBER_HTTP_TIMEOUT"),
    "lock timeout is infinite": (b"AWEBER_LOCK_TIMEOUT=inf\n", "AWEBER_LOCK_TIMEOUT"),
    "lock timeout is negative": (b"AWEBER_LOCK_TIMEOUT=-1\n", "AWEBER_LOCK_TIMEOUT"),
    "rate limit is zero": (b"AWEBER_RATE_LIMIT=0\n", "AWEBER_RATE_LIMIT"),
    "rate limit is a fraction": (b"AWEBER_RATE_LIMIT=1.5\n", "AWEBER_RATE_LIMIT"),
    "log format is xml": (b"AWEBER_LOG_FORMAT=xml\n", "AWEBER_LOG_FORMAT"),
    "account id is a word": (b"AWEBER_ACCOUNT_ID=main\n", "AWEBER_ACCOUNT_ID"),
    "list ids have a gap": (b"AWEBER_LIST_IDS=1,,2\n", "AWEBER_LIST_IDS"),
    "token URL is plain http off loopback": (b"AWEBER_TOKEN_URL=http://auth.example.com/oauth2/token\n",
                                             "AWEBER_TOKEN_URL"),
    "token URL is ftp": (b"AWEBER_TOKEN_URL=ftp://127.0.0.1/oauth2/token\n", "AWEBER_TOKEN_URL"),
    "API URL has no host": (b"AWEBER_API_URL=https:///1.0\n", "AWEBER_API_URL"),
    "ping URL is plain http off loopback": (b"AWEBER_PING_URL=http://hc-ping.example.com/abc\n", "AWEBER_PING_URL"),
    "secret and secret file both": (b"AWEBER_CLIENT_SECRET=s3cret-value\nAWEBER_CLIENT_SECRET_FILE=/etc/hostname\n",
                                    "AWEBER_CLIENT_SECRET"),
    "secret file missing": (b"AWEBER_CLIENT_SECRET_FILE=/nonexistent/aweber-secret\n", "AWEBER_CLIENT_SECRET_FILE"),
    "three problems at once": (b"AWEBER_HTTP_TIMEOUT=x\nAWEBER_RATE_LIMIT=y\nAWEBER_LOG_FORMAT=z\n",
                               "3 configuration errors"),
}


@pytest.mark.parametrize("case", list(ENV_FILE_TABLE))
def test_bad_env_file_from_the_table(tmp_path_factory: pytest.TempPathFactory, case: str) -> None:
    """Each bad `.env`: exit 78 with one line naming the variable; the token file untouched."""
    content, words = ENV_FILE_TABLE[case]
    with fresh_home(tmp_path_factory, "badenv") as home:
        home.write_valid_tokens()
        env_file = home.root / ".env"
        env_file.write_bytes(content)
        environ = home.environ()
        for line in content.decode("utf-8", "replace").splitlines():
            environ.pop(line.split("=", 1)[0], None)  # let the file speak for the variables it sets
        before = file_hash(home.token_file)
        outcome = home.call(["refresh"], environ)
        check("bad input: .env files (table)", home, outcome, 78, before)
        assert words in outcome.error_lines[0], outcome.error_lines[0]


def test_env_line_that_cannot_be_parsed_is_warned_about(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A `.env` line python-dotenv cannot parse is skipped with a warning naming the line (not silently)."""
    with fresh_home(tmp_path_factory, "badenv") as home:
        home.write_valid_tokens()
        env_file = home.root / ".env"
        env_file.write_bytes(b'AWEBER_LOCK_TIMEOUT=3\nAWEBER_HTTP_TIMEOUT="5\n')
        before = file_hash(home.token_file)
        outcome = home.call(["refresh"], home.environ())
        check("bad input: .env files (table)", home, outcome, 75, before)
        assert "could not parse statement starting at line 2" in outcome.stderr


@pytest.mark.parametrize("how", ["--env-file pointing nowhere", "AWEBER_ENV_FILE pointing nowhere",
                                 "--env-file naming a directory"])
def test_env_file_that_cannot_be_read(tmp_path_factory: pytest.TempPathFactory, how: str) -> None:
    """An env file that is missing or a directory: exit 78 naming where it came from."""
    with fresh_home(tmp_path_factory, "noenv") as home:
        home.write_valid_tokens()
        before = file_hash(home.token_file)
        if how.startswith("--env-file pointing"):
            outcome = home.call(["--env-file", str(home.root / "missing.env"), "refresh"], home.environ())
        elif how.startswith("AWEBER_ENV_FILE"):
            outcome = home.call(["refresh"], home.environ(AWEBER_ENV_FILE=str(home.root / "missing.env")))
        else:
            outcome = home.call(["--env-file", str(home.root), "refresh"], home.environ())
        check("bad input: .env files (table)", home, outcome, 78, before)
        assert how.split()[0] in outcome.error_lines[0]


def expected_for_environment(file_values: Mapping[str, str | None], environ: Mapping[str, str]) -> int:
    """78 when a variable the suite varies breaks the written-out rules (tests/survival/oracle.py), the
    environment winning over the `.env` file; else the offline refresh: 75."""
    merged = {k: v for k, v in file_values.items() if v is not None} | dict(environ)
    refused = any(setting_refused(name, merged[name]) for name in SAFE_TO_VARY if name in merged)
    return 78 if refused else 75


env_values = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12) | \
    st.sampled_from(["", "0", "-1", "1e309", "nan", "inf", "12", "0.0001", "1,2", "json", "noop", " 5 "])
env_lines = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(SAFE_TO_VARY), env_values),
    st.builds(lambda k, v: f'export {k}="{v}"', st.sampled_from(SAFE_TO_VARY), env_values),
    st.text(alphabet=string.printable, max_size=30),
)


@HYPOTHESIS
@given(lines=st.lists(env_lines, max_size=6))
def test_generated_env_files(tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> None:
    """A generated `.env`: exit 78 exactly when the written-out settings rules refuse it (else 75, offline); one line,
    no traceback, the token file untouched."""
    home = Home(tmp_path_factory.mktemp("genenv"))
    home.write_valid_tokens()
    env_file = home.root / "generated.env"
    env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    environ = home.environ()
    before = file_hash(home.token_file)
    # The file's syntax is python-dotenv's (read here with the library itself, not the job's loader).
    file_values = dotenv_values(env_file)
    assume(not any(k.startswith("AWEBER_") and k not in SAFE_TO_VARY for k in file_values))
    expected = expected_for_environment(file_values, environ)
    outcome = home.call(["--env-file", str(env_file), "refresh"], environ)
    check("bad input: .env files (Hypothesis)", home, outcome, expected, before)


@HYPOTHESIS
@given(variables=st.dictionaries(st.sampled_from(SAFE_TO_VARY), env_values, max_size=5))
def test_generated_variables(tmp_path_factory: pytest.TempPathFactory, variables: dict[str, str]) -> None:
    """Generated variables: exit 78 exactly when the written-out settings rules refuse them (else 75, offline)."""
    home = Home(tmp_path_factory.mktemp("genvars"))
    home.write_valid_tokens()
    environ = home.environ(**variables)
    before = file_hash(home.token_file)
    expected = expected_for_environment({}, environ)
    outcome = home.call(["refresh"], environ)
    check("bad input: variables (Hypothesis)", home, outcome, expected, before)


BOUNDARY_VALUES = ("", " ", "-1", "-0.001", "0", "0.0005", "0.001", "1", "1.5", " 5 ", "+3", "1_0", "inf", "nan",
                   "1e309", "abc", "JSON", "text", "0,1", "1,2", "1,,2", "\u00b2", "\u0665")


@pytest.mark.parametrize("name", SAFE_TO_VARY)
def test_each_variable_at_its_boundaries(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    """Each variable the suite varies, at every value near its limits: exit 78 exactly when the written-out
    rules refuse the value (else 75, offline), one line, the token file untouched."""
    for value in BOUNDARY_VALUES:
        home = Home(tmp_path_factory.mktemp("boundary"))
        home.write_valid_tokens()
        before = file_hash(home.token_file)
        outcome = home.call(["refresh"], home.environ(**{name: value}))
        check("bad input: variables (table)", home, outcome, 78 if setting_refused(name, value) else 75, before)


# -- command lines ----------------------------------------------------------------------------------

ARGV_WORDS = [
    "run", "refresh", "status", "tasks", "frobnicate", "--task", "noop", "new-subscribers", "no-such-task",
    "pkg.missing:task", "--format", "csv", "jsonl", "xml", "--since", "24h", "7d", "-3d", "0h", "tomorrow",
    "2999-01-01", "2026-02-30", "-v", "-vv", "-q", "--quiet", "--log-format", "json", "yaml", "--json",
    "--bogus", "-x", "--", "",
]


# The command line, written out (docs/design.md, commands): global options (-v, -vv, -q, --log-format
# text|json) go before or after the command; run options (--task NAME, --format jsonl|csv, --since
# DURATION|DATE) go with `run` or with no command (which means run); `status` takes --json after it.
# A known task is a registered name; --since is a positive duration (s, m, h, d, w) or a past date, and
# an empty --since means the default (as an empty variable does).
# Anything else -- an unknown command, option or word, a bad choice, an option missing its value, an
# unknown task, a bad --since -- is a usage error: 64, before any lock or token is touched. Otherwise
# `status` and `tasks` end 0 and `run` and `refresh` end 75 here (the token endpoint is a closed port).
GLOBAL_OPTIONS = {("-v",): True, ("-vv",): True, ("-q",): True, ("--quiet",): True,
                  ("--log-format", "text"): True, ("--log-format", "json"): True,
                  ("--log-format", "yaml"): False, ("--log-format", ""): False}
RUN_OPTIONS = {
    "--task": {"new-subscribers": True, "noop": True, "no-such-task": False, "pkg.missing:task": False},
    "--format": {"jsonl": True, "csv": True, "xml": False, "JSONL": False},
    "--since": {"24h": True, "7d": True, "90m": True, "2w": True, "1.5h": True, "2026-11-01": True,
                "0h": False, "-3d": False, "tomorrow": False, "2999-01-01": False, "2026-02-30": False,
                "": True},
}
BREAKAGES = {"none": (), "unknown option": ("--bogus",), "unknown short option": ("-x",),
             "stray word": ("frobnicate",), "second command": ("refresh",),
             "option missing its value": ("--since",), "log format missing its value": ("--log-format",)}


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[list[str], int]:
    """A command line built from the written-out grammar above, and the exit code it must give."""
    command = draw(st.sampled_from([None, "run", "refresh", "status", "tasks"]))
    before: list[str] = []
    after: list[str] = []
    valid = True
    globals_chosen = draw(st.lists(st.sampled_from(list(GLOBAL_OPTIONS)), max_size=3,
                                   unique_by=lambda words: words[0]))
    for words in globals_chosen:
        valid &= GLOBAL_OPTIONS[words]
        (after if command and draw(st.booleans()) else before).extend(words)
    run_options_given = False
    if command in (None, "run"):
        for option in draw(st.lists(st.sampled_from(list(RUN_OPTIONS)), max_size=3, unique=True)):
            run_options_given = True
            value = draw(st.sampled_from(list(RUN_OPTIONS[option])))
            valid &= RUN_OPTIONS[option][value]
            (after if command and draw(st.booleans()) else before).extend([option, value])
    if command == "status" and draw(st.booleans()):
        json_after = draw(st.booleans())
        valid &= json_after  # only `status` knows --json
        (after if json_after else before).append("--json")
    breakage = draw(st.sampled_from(["none"] * 4 + list(BREAKAGES)))  # half the lines unbroken at the end
    if breakage == "second command" and command is None:
        # With no command before it, "refresh" is the command itself: fine, unless run options stand
        # before it (they would be ignored by refresh, so they are refused).
        return [*before, "refresh"], (64 if not valid or run_options_given else 75)
    valid &= breakage == "none"
    argv = before + ([command] if command else []) + after + list(BREAKAGES[breakage])
    return argv, (64 if not valid else 0 if command in ("status", "tasks") else 75)


@HYPOTHESIS
@given(case=command_lines())
def test_generated_command_lines(tmp_path_factory: pytest.TempPathFactory, case: tuple[list[str], int]) -> None:
    """A command line from the written-out grammar: exit 64 exactly for a usage error (before the lock or any
    token is touched), else the command's own outcome offline; one line, no traceback, the file untouched."""
    argv, expected = case
    home = Home(tmp_path_factory.mktemp("genargv"))
    home.write_valid_tokens()
    before = file_hash(home.token_file)
    outcome = home.call(argv, home.environ())
    check("bad input: command lines (Hypothesis)", home, outcome, expected, before)


EVERY_OPTION_VALUE = [([option, value], ok) for option, values in RUN_OPTIONS.items() for value, ok in values.items()] \
    + [(list(words), ok) for words, ok in GLOBAL_OPTIONS.items()]


@pytest.mark.parametrize(("words", "ok"), EVERY_OPTION_VALUE, ids=[" ".join(w) or "-" for w, _ in EVERY_OPTION_VALUE])
def test_every_option_value_of_the_grammar(tmp_path_factory: pytest.TempPathFactory, words: list[str],
                                           ok: bool) -> None:
    """Each option value the grammar names, given to `run`: 64 exactly when the grammar refuses it, else 75."""
    home = Home(tmp_path_factory.mktemp("argvalue"))
    home.write_valid_tokens()
    before = file_hash(home.token_file)
    outcome = home.call(["run", *words], home.environ())
    check("bad input: command lines (table)", home, outcome, 75 if ok else 64, before)


@HYPOTHESIS
@given(argv=st.lists(st.sampled_from(ARGV_WORDS) | st.text(max_size=6), max_size=6))
def test_command_line_word_soup(tmp_path_factory: pytest.TempPathFactory, argv: list[str]) -> None:
    """Any words at all: a usage error (64) or a command's offline outcome (0 or 75), never anything else;
    one line, no traceback, the token file untouched."""
    home = Home(tmp_path_factory.mktemp("genargv"))
    home.write_valid_tokens()
    before = file_hash(home.token_file)
    outcome = home.call(argv, home.environ())
    check("bad input: command lines (Hypothesis)", home, outcome, frozenset({0, 64, 75}), before)


COMMAND_LINE_TABLE = {
    "unknown command": (["frobnicate"], "invalid choice"),
    "unknown option": (["run", "--bogus"], "--bogus"),
    "bad format": (["run", "--format", "xml"], "xml"),
    "unknown task": (["run", "--task", "no-such-task"], "known tasks"),
    "task module missing": (["run", "--task", "no_such_pkg.mod:task"], "cannot be loaded"),
    "since is a word": (["run", "--since", "yesterday"], "--since"),
    "since is negative": (["run", "--since", "-3d"], "--since"),
    "since in the future": (["run", "--since", "2999-01-01"], "future"),
    "since is an impossible date": (["run", "--since", "2026-02-30"], "--since"),
    "log format yaml": (["--log-format", "yaml", "refresh"], "yaml"),
    "option needs a value": (["run", "--task"], "--task"),
    "run option given to status": (["--task", "noop", "status"], "--task is an option of run, not of status"),
}


@pytest.mark.parametrize("case", list(COMMAND_LINE_TABLE))
def test_bad_command_line_from_the_table(tmp_path_factory: pytest.TempPathFactory, case: str) -> None:
    """Each bad command line: exit 64 with one line saying what, before any lock or token is touched."""
    argv, words = COMMAND_LINE_TABLE[case]
    with fresh_home(tmp_path_factory, "badargv") as home:
        home.write_valid_tokens()
        before = file_hash(home.token_file)
        outcome = home.call(argv, home.environ())
        check("bad input: command lines (table)", home, outcome, 64, before)
        assert words in outcome.error_lines[0], outcome.error_lines[0]
        assert not (home.root / "tokens.json.lock").exists()


# -- a handful through real processes -----------------------------------------------------------------

PROCESS_CASES = {
    "bad option": (["run", "--format", "xml"], {}, None, 64),
    "unknown task": (["--task", "no-such-task"], {}, None, 64),
    "bad variable": (["refresh"], {"AWEBER_HTTP_TIMEOUT": "abc"}, None, 78),
    "non-UTF-8 .env": (["refresh"], {}, b"AWEBER_LOCK_TIMEOUT=\xff\n", 78),
    "deeply nested token file": (["run"], {}, None, 65),
    "token file is a named pipe": (["refresh"], {}, None, 65),
    "token file is a named pipe, status": (["status"], {}, None, 65),
    "lone surrogate in the refresh token": (["run"], {}, None, 65),
    "lone surrogate in the refresh token, status": (["status"], {}, None, 65),
}


@pytest.mark.parametrize("case", list(PROCESS_CASES))
def test_bad_input_to_a_real_process(case: str, tmp_path: Path, new_workspace: Callable[..., Workspace],
                                     start_standin: Callable[..., object]) -> None:
    """The same promises hold for a real `aweber-job` process: exit code, one line, no traceback."""
    argv, variables, env_file, expected = PROCESS_CASES[case]
    ws = new_workspace(start_standin(list_size=0), ping=False)
    ws.seed_tokens()
    if case == "deeply nested token file":
        ws.token_file.write_bytes(b"[" * 100_000)
    if case.startswith("token file is a named pipe"):
        # Opening a FIFO for reading would block until a writer came: the job must refuse it, not hang.
        ws.token_file.unlink()
        os.mkfifo(ws.token_file)
    if case.startswith("lone surrogate"):
        ws.token_file.write_bytes(LONE_SURROGATE_TOKENS)
    if env_file is not None:
        (REPO_ENV := ws.root / "job.env").write_bytes(env_file)
        argv = ["--env-file", str(REPO_ENV), *argv]
    before = file_hash(ws.token_file)
    ran = ws.run(argv, ws.env(**variables), timeout=30)
    scenario = "bad input: real processes"
    with TALLY.attempt(scenario):
        assert ran.returncode == expected, ran.stderr
        assert "Traceback" not in ran.stderr + ran.stdout
        if argv[-1] == "status":
            # status reports on stdout, the problem on a line of its own.
            problems = [line for line in ran.stdout.splitlines() if line.startswith("problem:")]
        else:
            problems = error_lines(ran.stderr)
        assert len(problems) == 1, ran.stdout + ran.stderr
        if case.startswith("lone surrogate"):
            assert str(ws.token_file) in problems[0] and "'refresh_token'" in problems[0], problems[0]
            assert REAL_LOOKING_TOKEN not in ran.stdout + ran.stderr
        assert file_hash(ws.token_file) == before
        assert ws.standin.token_requests() == 0
