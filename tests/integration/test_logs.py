"""Logs: --quiet is silent on success, --log-format json is one object a line, secrets are redacted
even in third-party lines, and errors are one line without a traceback."""

from __future__ import annotations

import io
import json
import logging

from job.logs import REDACTOR, configure_logging
from tests.support.jobs import JobFiles, run_job


def test_quiet_prints_nothing_on_success(job: JobFiles) -> None:
    """`-q run --task noop` succeeds with empty stdout and stderr, so cron mails nothing."""
    job.write_tokens()
    result = run_job(["-q", "run", "--task", "noop"], job.env())
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""


def test_quiet_after_the_command_works_too(job: JobFiles) -> None:
    """Global options are accepted after the command as well (`run -q`)."""
    job.write_tokens()
    result = run_job(["refresh", "-q"], job.env())
    assert result.returncode == 0 and result.stderr == ""


def test_json_log_format_is_one_object_a_line_with_fields(job: JobFiles) -> None:
    """Every stderr line parses as JSON with ts, level and msg; the success line carries fingerprints."""
    grant = job.write_tokens()
    result = run_job(["--log-format", "json", "-v", "refresh"], job.env())
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and all({"ts", "level", "msg"} <= set(line) for line in lines)
    success = [line for line in lines if line["msg"].startswith("token refreshed")]
    assert len(success) == 1
    assert success[0]["refresh_token_after"] != success[0]["refresh_token_before"]
    assert grant["refresh_token"] not in result.stderr


def test_json_format_from_the_environment_and_errors_carry_the_exit_code(job: JobFiles) -> None:
    """AWEBER_LOG_FORMAT=json applies to errors too: one object with the exit code."""
    result = run_job(["refresh"], job.env(AWEBER_LOG_FORMAT="json"))
    assert result.returncode == 65
    (line,) = [json.loads(x) for x in result.stderr.splitlines()]
    assert line["level"] == "error" and line["exit_code"] == 65


def test_redactor_masks_secrets_in_any_logger_at_any_level() -> None:
    """A secret logged by a third-party logger is replaced by its fingerprint before it is written."""
    stream = io.StringIO()
    configure_logging(verbosity=2, stream=stream)
    REDACTOR.add("very-secret-token-value-123")
    logging.getLogger("urllib3.connectionpool").debug("sent body refresh_token=very-secret-token-value-123")
    logging.getLogger("job").error("oops %s", "very-secret-token-value-123")
    text = stream.getvalue()
    assert "very-secret-token-value-123" not in text
    assert text.count("[redacted:") == 2


def test_usage_errors_exit_64_with_one_line() -> None:
    """A bad option is exit 64 and one line on stderr, not argparse's exit 2."""
    result = run_job(["run", "--format", "xml"], {"PATH": "/usr/bin:/bin"})
    assert result.returncode == 64
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--format" in result.stderr


# What a connection name inserted into the store by hand may hold: each character would split a line,
# move the cursor or restyle a terminal if written as it is.
HOSTILE = "acme\nwarning: forged\r\x1b[31m\x85\u2028\u2029\t\x7f"


def test_a_text_log_line_stays_one_line_whatever_its_message_interpolates() -> None:
    """Control characters in a text log message are written escaped, as repr writes them, so one record is one line."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    logging.getLogger("job.run.fleet").error("connection '%s' failed", HOSTILE)
    text = stream.getvalue()
    assert text.count("\n") == 1 and len(text.splitlines()) == 1, text
    assert text == (
        "aweber-job: error: connection 'acme\\nwarning: forged\\r\\x1b[31m\\x85\\u2028\\u2029\\t\\x7f' failed\n"
    )


def test_a_traceback_shown_with_verbose_keeps_its_lines_below_a_one_line_message() -> None:
    """With -v an exception's traceback follows on lines of its own; the message line above it is still escaped."""
    stream = io.StringIO()
    configure_logging(verbosity=1, stream=stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("job").debug("where %s failed", "a\nb", exc_info=True)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "aweber-job: debug: where a\\nb failed"
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "ValueError: boom"


def test_a_json_log_record_is_one_line_even_to_readers_that_split_on_unicode_line_breaks() -> None:
    """Each JSON record is one line by str.splitlines too (U+0085, U+2028, U+2029 escaped) and keeps the exact text."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    logging.getLogger("job.run.fleet").error("connection '%s' failed", HOSTILE)
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["msg"] == f"connection '{HOSTILE}' failed"


def test_a_secret_holding_a_control_character_is_redacted_in_its_escaped_form_too() -> None:
    """Escaping a text log line does not let a secret slip past the redactor."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    REDACTOR.add("secret-with\na-newline-987")
    logging.getLogger("urllib3.connectionpool").warning("body refresh_token=secret-with\na-newline-987")
    text = stream.getvalue()
    assert "secret-with" not in text and "a-newline-987" not in text
    assert text.count("[redacted:") == 1


def test_secrets_of_a_connection_are_forgotten_after_its_scope_but_not_others() -> None:
    """A secret registered inside a scope is masked until the last scope holding it ends; one registered outside
    any scope (the database password, a store key) stays masked for good."""
    import threading

    from job.logs import Redactor

    redactor = Redactor()
    redactor.add("the-permanent-password")
    before = redactor.known()
    with redactor.scope():
        redactor.add("connection-one-token", "the-permanent-password", "shared-client-secret")
        other_added = threading.Event()
        other_may_end = threading.Event()

        def other_connection() -> None:
            with redactor.scope():
                redactor.add("shared-client-secret", "connection-two-token")
                other_added.set()
                other_may_end.wait(5)

        worker = threading.Thread(target=other_connection)
        worker.start()
        assert other_added.wait(5)
        assert "connection-one-token" not in redactor.redact("a connection-one-token b")
    # The first scope ended; the second still holds the shared secret.
    assert "connection-one-token" in redactor.redact("a connection-one-token b")
    assert "shared-client-secret" not in redactor.redact("shared-client-secret")
    assert "connection-two-token" not in redactor.redact("connection-two-token")
    other_may_end.set()
    worker.join(5)
    assert "shared-client-secret" in redactor.redact("shared-client-secret")
    assert "the-permanent-password" not in redactor.redact("the-permanent-password")
    assert redactor.known() == before


def test_a_thousand_scoped_connections_leave_the_redactor_as_it_was() -> None:
    """The secrets a fleet run registers connection by connection do not pile up: the work per line stays flat."""
    from job.logs import Redactor

    redactor = Redactor()
    redactor.add("the-permanent-password")
    for number in range(1000):
        with redactor.scope():
            redactor.add(f"access-token-{number:06d}", f"refresh-token-{number:06d}")
            assert redactor.known() == 3
    assert redactor.known() == 1


def test_a_tasks_lines_in_a_fleet_worker_name_the_connection_and_a_task_may_name_one_itself() -> None:
    """Inside naming_connection a task's line says whose it is; a task logging its own ``connection`` field keeps it
    (the naming must not collide with what the task gave: logging refuses to overwrite a record's field)."""
    import io

    from job.logs import configure_logging, naming_connection

    stream = io.StringIO()
    configure_logging(stream=stream)
    task_log = logging.getLogger("job.task.custom")
    with naming_connection("acme"):
        task_log.info("list %s: %d new", 7, 3)
        task_log.info("posted", extra={"connection": "its-own"})
    task_log.info("outside any worker")
    lines = stream.getvalue().splitlines()
    assert lines == ["aweber-job: info: connection 'acme': list 7: 3 new", "aweber-job: info: posted",
                     "aweber-job: info: outside any worker"]
