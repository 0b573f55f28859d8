"""Configuration: every variable and default, all problems at once, secrets hidden, .env.example in step."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from job.cli import load_environment
from job.config import VARIABLES, load_settings
from job.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_follow_the_spec(tmp_path: Path) -> None:
    """With nothing set, every value is the documented default and the token file is under XDG state."""
    settings = load_settings({"HOME": str(tmp_path)})
    assert settings.token_file == tmp_path / ".local/state/aweber-job/tokens.json"
    assert settings.state_dir == settings.token_file.parent
    assert settings.token_url == "https://auth.aweber.com/oauth2/token"
    assert settings.authorize_url == "https://auth.aweber.com/oauth2/authorize"
    assert settings.revoke_url == "https://auth.aweber.com/oauth2/revoke"
    assert settings.api_url == "https://api.aweber.com/1.0"
    assert settings.task == "new-subscribers"
    assert (settings.lock_timeout_seconds, settings.http_timeout_seconds) == (60, 30)
    # 100 a minute leaves headroom under AWeber's 120 per account for other integrations on it.
    assert (settings.retry_deadline_seconds, settings.rate_limit_per_minute) == (300, 100)
    assert settings.refresh_leeway_seconds == 300
    assert settings.client_secret is None and settings.is_public_client
    assert settings.log_format == "text"


def test_token_file_default_prefers_systemd_state_directory_then_xdg(tmp_path: Path) -> None:
    """STATE_DIRECTORY wins over XDG_STATE_HOME, which wins over ~/.local/state."""
    assert load_settings({"STATE_DIRECTORY": "/var/lib/aweber-job"}).token_file == Path(
        "/var/lib/aweber-job/tokens.json")
    assert load_settings({"XDG_STATE_HOME": str(tmp_path)}).token_file == tmp_path / "aweber-job/tokens.json"


def test_every_problem_is_reported_at_once_naming_its_variable() -> None:
    """Several bad variables give one ConfigError (exit 78) listing each by name."""
    with pytest.raises(ConfigError) as caught:
        load_settings({
            "AWEBER_TOKEN_URL": "http://auth.example.com/token",
            "AWEBER_LOCK_TIMEOUT": "soon",
            "AWEBER_RATE_LIMIT": "0",
            "AWEBER_ACCOUNT_ID": "abc",
            "AWEBER_LIST_IDS": "1,x",
            "AWEBER_LOG_FORMAT": "xml",
            "AWEBER_API_URL": "ftp://api.aweber.com",
        })
    message = str(caught.value)
    assert caught.value.exit_code == 78
    for name in ("AWEBER_TOKEN_URL", "AWEBER_LOCK_TIMEOUT", "AWEBER_RATE_LIMIT", "AWEBER_ACCOUNT_ID",
                 "AWEBER_LIST_IDS", "AWEBER_LOG_FORMAT", "AWEBER_API_URL"):
        assert name in message
    assert len(caught.value.problems) == 7


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/t", "http://localhost/t", "http://[::1]:9/t",
                                 "http://127.5.6.7/t", "https://auth.example.com/t"])
def test_plain_http_is_accepted_only_for_loopback(url: str) -> None:
    """Loopback hosts may use http (tests, the demo); everything else must be https."""
    assert load_settings({"AWEBER_TOKEN_URL": url}).token_url == url


@pytest.mark.parametrize("url", ["http://10.0.0.1/t", "http://example.com/t", "https://", "not a url",
                                 "https://user:pw@auth.aweber.com/t"])
def test_bad_urls_are_refused(url: str) -> None:
    """Non-loopback http, missing hosts and embedded credentials are configuration errors."""
    with pytest.raises(ConfigError, match="AWEBER_TOKEN_URL"):
        load_settings({"AWEBER_TOKEN_URL": url})


def test_secret_from_file_and_from_systemd_credentials(tmp_path: Path) -> None:
    """The secret comes from AWEBER_CLIENT_SECRET_FILE's first line, or from $CREDENTIALS_DIRECTORY."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret-from-file\nsecond line\n")
    settings = load_settings({"AWEBER_CLIENT_SECRET_FILE": str(secret_file)})
    assert settings.client_secret is not None and settings.client_secret.reveal() == "s3cret-from-file"
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "aweber-client-secret").write_text("s3cret-from-systemd\n")
    settings = load_settings({"CREDENTIALS_DIRECTORY": str(credentials)})
    assert settings.client_secret is not None and settings.client_secret.reveal() == "s3cret-from-systemd"
    assert "s3cret" not in repr(settings)


def test_secret_file_with_a_byte_order_mark_gives_the_secret_without_it(tmp_path: Path) -> None:
    """A secret file saved by an editor with a UTF-8 BOM yields the secret itself, not BOM + secret."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"\xef\xbb\xbfs3cret-with-bom\r\n")
    settings = load_settings({"AWEBER_CLIENT_SECRET_FILE": str(secret_file)})
    assert settings.client_secret is not None
    assert settings.client_secret.reveal() == "s3cret-with-bom"


def test_unreadable_secret_file_and_conflicting_secrets_are_errors(tmp_path: Path) -> None:
    """A missing secret file, an empty one, or both secret variables set: exit 78 naming the variable."""
    with pytest.raises(ConfigError, match="AWEBER_CLIENT_SECRET_FILE"):
        load_settings({"AWEBER_CLIENT_SECRET_FILE": str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings({"AWEBER_CLIENT_SECRET_FILE": str(empty)})
    with pytest.raises(ConfigError, match="both set") as caught:
        load_settings({"AWEBER_CLIENT_SECRET": "inline-secret-value", "AWEBER_CLIENT_SECRET_FILE": str(empty)})
    assert "inline-secret-value" not in str(caught.value)


def test_env_file_fills_in_and_the_real_environment_wins(tmp_path: Path) -> None:
    """Values in the .env file apply unless the environment sets the same variable."""
    env_file = tmp_path / "env"
    env_file.write_text("AWEBER_CLIENT_ID=from-file\nAWEBER_TASK=noop\n")
    merged = load_environment(str(env_file), {"AWEBER_CLIENT_ID": "from-env"})
    assert merged["AWEBER_CLIENT_ID"] == "from-env" and merged["AWEBER_TASK"] == "noop"


def test_missing_explicit_env_file_is_a_config_error(tmp_path: Path) -> None:
    """--env-file naming a missing file is exit 78, not silently ignored."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_environment(str(tmp_path / "nope"), {})


def test_empty_values_count_as_unset() -> None:
    """A copied .env.example with empty values behaves like an unset variable."""
    settings = load_settings({"AWEBER_PING_URL": "", "AWEBER_ACCOUNT_ID": "", "AWEBER_CLIENT_SECRET": ""})
    assert settings.ping_url is None and settings.account_id is None and settings.client_secret is None


def test_env_example_documents_exactly_the_variables_the_code_reads() -> None:
    """.env.example, config.VARIABLES and every AWEBER_* name in the code agree."""
    example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(AWEBER_[A-Z_]+)=", example, flags=re.MULTILINE))
    assert documented == set(VARIABLES)
    used: set[str] = set()
    for path in (REPO / "job").rglob("*.py"):
        # Variables are read by name, so look for AWEBER_* inside string literals only.
        used |= set(re.findall(r"[\"'](AWEBER_[A-Z_]+)\b", path.read_text()))
    # AWEBER_ENV_FILE names the .env file itself (docs/design.md §2), so it cannot live in it.
    assert used - {"AWEBER_ENV_FILE"} <= set(VARIABLES)
    assert set(VARIABLES) <= used


def test_env_example_documents_each_variable_once() -> None:
    """No variable of .env.example is set (or shown commented out) twice: a copy would hide which one applies."""
    example = (REPO / ".env.example").read_text()
    names = re.findall(r"^#?\s*(AWEBER_[A-Z_]+)=", example, flags=re.MULTILINE)
    assert sorted(name for name in set(names) if names.count(name) > 1) == []


def test_example_env_file_loads_as_valid_configuration(tmp_path: Path) -> None:
    """The shipped .env.example, as it is, is a valid configuration."""
    env = load_environment(str(REPO / ".env.example"), {"HOME": str(tmp_path)})
    settings = load_settings(env)
    assert settings.rate_limit_per_minute == 100


def test_an_empty_secret_file_says_how_to_fix_it_for_either_kind_of_client(tmp_path: Path) -> None:
    """An empty AWEBER_CLIENT_SECRET_FILE says to remove it for a public client or fill its first line."""
    empty = tmp_path / "client-secret"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError) as caught:
        load_settings({"AWEBER_CLIENT_SECRET_FILE": str(empty)})
    assert caught.value.problems == [
        f"AWEBER_CLIENT_SECRET_FILE: {empty} is empty: for a public client (PKCE, no secret) remove "
        "AWEBER_CLIENT_SECRET_FILE; for a confidential one put the secret on its first line"
    ]


def test_an_empty_systemd_credential_says_how_to_fix_it_for_either_kind_of_client(tmp_path: Path) -> None:
    """An empty credential aweber-client-secret names the drop-in to remove for a public client, or the line to fill."""
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "aweber-client-secret").write_text("\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"CREDENTIALS_DIRECTORY": str(credentials)})
    (problem,) = caught.value.problems
    assert problem.startswith(f"the systemd credential aweber-client-secret ({credentials}/aweber-client-secret) "
                              "is empty: for a public client (PKCE, no secret) remove")
    assert "client-secret.conf" in problem
    assert problem.endswith("for a confidential one put the secret on the first line of the file it loads")


def test_a_secret_file_whose_first_line_is_blank_says_so(tmp_path: Path) -> None:
    """A secret below a blank first line is not taken: the message says the first line is blank."""
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("\n  \nsecret-on-line-three\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"AWEBER_CLIENT_SECRET_FILE": str(secret_file)})
    message = str(caught.value)
    assert "first line is blank" in message and "secret-on-line-three" not in message


@pytest.mark.parametrize("raw", ["inf", "-inf", "Infinity", "nan", "NaN"])
@pytest.mark.parametrize("name", ["AWEBER_HTTP_TIMEOUT", "AWEBER_LOCK_TIMEOUT", "AWEBER_RETRY_DEADLINE",
                                  "AWEBER_REFRESH_LEEWAY"])
def test_infinity_and_nan_are_named_as_not_finite(name: str, raw: str) -> None:
    """inf or nan for a number of seconds is refused as not a finite number (not as "too small")."""
    with pytest.raises(ConfigError) as caught:
        load_settings({name: raw})
    assert caught.value.problems == [f"{name} must be a finite number of seconds, got {raw!r}"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6h", 21_600), ("90m", 5_400), ("45s", 45), ("3600", 3_600), ("1.5h", 5_400), (" 2 h ", 7_200), ("1d", 86_400),
     ("0.5", 0.5)],
)
def test_run_timeout_takes_a_duration_or_seconds(text: str, seconds: float) -> None:
    """AWEBER_RUN_TIMEOUT is a duration (s, m, h, d) or a plain number of seconds."""
    assert load_settings({"AWEBER_RUN_TIMEOUT": text}).run_timeout_seconds == seconds


def test_run_timeout_defaults_to_six_hours() -> None:
    """Unset, a run may take at most 6 hours: well under the day between two daily runs."""
    assert load_settings({}).run_timeout_seconds == 6 * 3600


@pytest.mark.parametrize("text", ["0", "0h", "-1h", "soon", "6 hours", "nan", "inf", "6x"])
def test_a_bad_run_timeout_is_a_config_error_naming_it(text: str) -> None:
    """Zero, negative or unreadable run time limits are exit 78, naming AWEBER_RUN_TIMEOUT and the value."""
    with pytest.raises(ConfigError, match="AWEBER_RUN_TIMEOUT") as caught:
        load_settings({"AWEBER_RUN_TIMEOUT": text})
    assert repr(text.strip()) in str(caught.value)


def test_the_fallback_rescue_directory_is_systemds_runtime_directory_else_one_under_dev_shm() -> None:
    """Rescue files that cannot go beside the token file go to RUNTIME_DIRECTORY under systemd (kept between
    runs), else to a directory of the job's own under /dev/shm: both in memory, on another file system."""
    assert load_settings({"RUNTIME_DIRECTORY": "/run/aweber-job"}).fallback_rescue_dir == Path("/run/aweber-job")
    assert load_settings({}).fallback_rescue_dir == Path(f"/dev/shm/aweber-job-{os.geteuid()}")


def test_the_client_secret_stays_masked_after_a_connections_scope_ends(tmp_path: Path) -> None:
    """run --all registers each connection's secrets in a scope it forgets when the connection is done; the client
    secret, shared by all of them, is masked from the moment the settings are read, whatever scopes end after."""
    from job.logs import REDACTOR

    secret = "client-secret-kept-9d2e7a41"
    load_settings({"HOME": str(tmp_path), "AWEBER_CLIENT_ID": "cid", "AWEBER_CLIENT_SECRET": secret})
    with REDACTOR.scope():
        REDACTOR.add(secret)  # as the keeper does for each connection of a fleet run
    assert secret not in REDACTOR.redact(f"a line with {secret} in it")
