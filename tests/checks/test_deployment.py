"""The deployment files: the systemd units, the templates aweber-job@.service and .timer, crontab.example.

The systemd checks run the real `systemd-analyze` (Debian package `systemd`); they are
skipped, never faked, when it is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from job.config import CREDENTIAL_NAME
from job.standin import StandIn
from tests.support.jobs import CONFIDENTIAL_ID, CONFIDENTIAL_SECRET, PUBLIC_ID

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "systemd" / "aweber-job.service"
TIMER = ROOT / "systemd" / "aweber-job.timer"
# Installed only for a confidential app: it passes the client secret as a credential.
SECRET_DROP_IN = ROOT / "systemd" / "aweber-job.service.d" / "client-secret.conf"
README = ROOT / "README.md"
INSTANCES_DOC = ROOT / "docs" / "systemd-instances.md"
CRONTAB = ROOT / "crontab.example"

# Where the README, the unit and the crontab all say the console script is installed.
INSTALLED_PROGRAM = "/opt/aweber-job/venv/bin/aweber-job"

MAX_EXPOSURE = 1.5
PERMANENT_EXIT_CODES = {"1", "64", "65", "73", "76", "77", "78"}
TEMPORARY_EXIT_CODE = "75"

Unit = dict[str, dict[str, list[str]]]


# ---- unit files -----------------------------------------------------------------------------


def parse_unit(text: str) -> Unit:
    """Parse systemd unit-file text into section -> key -> values, in order of assignment.

    Comments and blank lines are dropped, backslash-continued lines joined, and an empty
    assignment resets the key's list, as systemd does.
    """
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        key, value = key.strip(), value.strip()
        if value:
            section.setdefault(key, []).append(value)
        else:
            section[key] = []
    return unit


def last_value(unit: Unit, section: str, key: str) -> str:
    """Return the effective value of a single-valued setting; fail if it is not set."""
    values = unit.get(section, {}).get(key, [])
    assert values, f"[{section}] {key}= is not set"
    return values[-1]


def all_words(unit: Unit, section: str, key: str) -> list[str]:
    """Return the words of every assignment of a list-valued setting, in order."""
    return [word for value in unit.get(section, {}).get(key, []) for word in value.split()]


TIMESPAN_UNIT_SECONDS = {
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
    "weeks": 604800.0,
}


def timespan_seconds(value: str) -> float:
    """Convert a systemd time span such as ``15min`` or ``1h 30min`` to seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and re.fullmatch(r"(\s*\d+(?:\.\d+)?\s*[a-z]*)+\s*", value), f"not a time span: {value!r}"
    total = 0.0
    for number, suffix in parts:
        assert suffix in TIMESPAN_UNIT_SECONDS, f"unknown time unit {suffix!r} in {value!r}"
        total += float(number) * TIMESPAN_UNIT_SECONDS[suffix]
    return total


def exec_start_argv(unit: Unit) -> list[str]:
    """Return ExecStart= split into words, without systemd's ``-@:+!`` prefixes on the program."""
    argv = shlex.split(last_value(unit, "Service", "ExecStart"))
    argv[0] = argv[0].lstrip("-@:+!")
    return argv


@pytest.fixture(scope="module")
def service() -> Unit:
    """The parsed service unit."""
    return parse_unit(SERVICE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def timer() -> Unit:
    """The parsed timer unit."""
    return parse_unit(TIMER.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """Path to systemd-analyze; skips the test when it is not installed."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return path


def runnable_job_command() -> list[str]:
    """Return a command line that starts the job from this checkout's environment."""
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    script = shutil.which("aweber-job", path=search_path)
    if script is not None:
        return [script]
    return [sys.executable, "-m", "job"]


def copy_units(directory: Path, service: Path, timer: Path, drop_in: Path | None) -> None:
    """Copy a service (its ExecStart running a job that exists on this machine), its timer and, when given, its
    client-secret drop-in into ``directory``, laid out as systemd-analyze reads them."""
    program_words = runnable_job_command()
    service_text = service.read_text(encoding="utf-8")
    old_program = re.escape(INSTALLED_PROGRAM)
    rewritten, count = re.subn(
        rf"^(ExecStart=[-@:+!]*){old_program}(?=\s|$)",
        lambda match: match.group(1) + shlex.join(program_words),
        service_text,
        flags=re.MULTILINE,
    )
    assert count == 1, f"expected one ExecStart={INSTALLED_PROGRAM} line in {service}"
    (directory / service.name).write_text(rewritten, encoding="utf-8")
    shutil.copyfile(timer, directory / timer.name)
    if drop_in is not None:
        # systemd-analyze reads <unit>.d/*.conf beside the unit file given to it.
        (directory / drop_in.parent.name).mkdir()
        shutil.copyfile(drop_in, directory / drop_in.parent.name / drop_in.name)


@pytest.fixture(params=["public client", "confidential client"])
def unit_copies(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Copies of both units whose ExecStart runs a job that exists on this machine, with the client-secret
    drop-in beside them for a confidential client."""
    copy_units(tmp_path, SERVICE, TIMER, SECRET_DROP_IN if request.param == "confidential client" else None)
    return tmp_path


def run_analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze without colours or a pager and capture what it says."""
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_units_pass_systemd_analyze_verify(systemd_analyze: str, unit_copies: Path) -> None:
    """Both units load in systemd-analyze verify with no error or warning about them."""
    service_copy = unit_copies / SERVICE.name
    timer_copy = unit_copies / TIMER.name
    result = run_analyze(systemd_analyze, "verify", str(service_copy), str(timer_copy), cwd=unit_copies)
    output = result.stdout + result.stderr
    about_ours = [
        line
        for line in output.splitlines()
        if SERVICE.name in line or TIMER.name in line or str(unit_copies) in line
    ]
    assert result.returncode == 0 and not about_ours, (
        f"systemd-analyze verify exited {result.returncode}:\n{output}"
    )


def test_service_sandbox_exposure_is_at_most_1_5(systemd_analyze: str, unit_copies: Path) -> None:
    """systemd-analyze security rates the service's sandbox 1.5 or lower."""
    result = run_analyze(
        systemd_analyze,
        "security",
        "--offline=true",
        "--no-pager",
        str(unit_copies / SERVICE.name),
        cwd=unit_copies,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match is not None, (
        f"no exposure level in systemd-analyze security output (exit {result.returncode}; "
        f"--offline needs systemd >= 250):\n{output}"
    )
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, (
        f"exposure {exposure} > {MAX_EXPOSURE}; the settings marked ✗ are the ones to tighten:\n{output}"
    )


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "oneshot"),
        ("Restart", "on-failure"),
        ("EnvironmentFile", "-/etc/aweber-job/env"),
        ("UMask", "0077"),
    ],
)
def test_service_sets(service: Unit, key: str, expected: str) -> None:
    """The service sets the values that the spec and the job's defaults rely on."""
    assert last_value(service, "Service", key) == expected


def test_service_keeps_a_runtime_directory_between_runs_for_rescue_files(service: Unit) -> None:
    """RuntimeDirectory= with RuntimeDirectoryPreserve=yes: a rescue file written there when /var turned read-only
    survives the unit's stop (DynamicUser's RemoveIPC would wipe one under /dev/shm) until the next run."""
    assert "aweber-job" in all_words(service, "Service", "RuntimeDirectory")
    assert last_value(service, "Service", "RuntimeDirectoryPreserve") == "yes"
    assert last_value(service, "Service", "RuntimeDirectoryMode") == "0700"


def test_service_state_directory_is_aweber_job(service: Unit) -> None:
    """StateDirectory=aweber-job, so $STATE_DIRECTORY/tokens.json is where the token file lives."""
    assert "aweber-job" in all_words(service, "Service", "StateDirectory")


def test_the_service_alone_needs_no_client_secret_file(service: Unit) -> None:
    """The unit loads no credential, so a public client (no secret) starts without a secret file: a
    LoadCredential= whose file is missing fails every start with 243/CREDENTIALS."""
    for key in ("LoadCredential", "LoadCredentialEncrypted", "SetCredential", "SetCredentialEncrypted"):
        assert service["Service"].get(key, []) == [], f"{SERVICE.name} sets {key}="


def test_the_confidential_drop_in_passes_the_secret_under_the_name_the_job_reads() -> None:
    """client-secret.conf passes /etc/aweber-job/client-secret as the credential aweber-client-secret."""
    drop_in = parse_unit(SECRET_DROP_IN.read_text(encoding="utf-8"))
    assert drop_in == {"Service": {"LoadCredential": [f"{CREDENTIAL_NAME}:/etc/aweber-job/client-secret"]}}


def shell_blocks(text: str) -> list[str]:
    """The ```sh fenced blocks of a Markdown text."""
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_the_readme_creates_the_secret_file_only_with_the_drop_in_that_loads_it() -> None:
    """The README's systemd steps create /etc/aweber-job/client-secret only in a confidential app's step, beside
    the drop-in that loads it, and never as an empty file (which would end every run with exit 78)."""
    blocks = [block for block in shell_blocks(README.read_text(encoding="utf-8")) if "/etc/systemd/system" in block]
    assert blocks, "the README shows no systemd installation"
    installs_units = [block for block in blocks if "aweber-job.timer" in block]
    assert installs_units and all("client-secret" not in block for block in installs_units)
    secret_blocks = [block for block in blocks if "/etc/aweber-job/client-secret" in block]
    assert len(secret_blocks) == 1
    assert "/etc/systemd/system/aweber-job.service.d/client-secret.conf" in secret_blocks[0]
    for block in blocks:
        for line in block.splitlines():
            if "/etc/aweber-job/client-secret" in line:
                assert "/dev/null" not in line and "touch" not in line.split(), line



def test_the_instance_steps_add_a_connection_with_its_own_env_file_sandbox_and_timer() -> None:
    """docs/systemd-instances.md's steps for instance acme write /etc/aweber-job/acme.env, log in with that env
    file and the instance's state directory, enable aweber-job@acme.timer, and create acme's secret file in a step
    of its own, never as an empty file (which a public app's instance does not need)."""
    instance = parse_unit(INSTANCE_SERVICE.read_text(encoding="utf-8"))
    state_directory = for_instance(last_value(instance, "Service", "StateDirectory"), "acme")
    env_file = for_instance(last_value(instance, "Service", "EnvironmentFile"), "acme")
    blocks = shell_blocks(INSTANCES_DOC.read_text(encoding="utf-8"))
    text = "\n".join(blocks)
    assert "/etc/aweber-job/acme.env" in text
    logins = [block for block in blocks if "login" in block and "aweber-job@acme.timer" in block]
    assert len(logins) == 1
    assert f"-p StateDirectory={state_directory} " in logins[0] and f"-p EnvironmentFile={env_file} " in logins[0]
    assert "systemctl enable --now aweber-job@acme.timer" in logins[0]
    secret_lines = [line for block in blocks for line in block.splitlines() if "acme.client-secret" in line]
    secret_blocks = [block for block in blocks if "acme.client-secret" in block]
    assert len(secret_lines) == len(secret_blocks) == 1 and secret_blocks[0].strip() == secret_lines[0].strip()
    assert "/dev/null" not in secret_lines[0] and "touch" not in secret_lines[0].split()

def test_service_restarts_only_on_temporary_failure(service: Unit) -> None:
    """Every permanent exit code prevents a restart and exit 75 does not, nor is it a success."""
    prevented = set(all_words(service, "Service", "RestartPreventExitStatus"))
    assert prevented >= PERMANENT_EXIT_CODES, f"missing: {sorted(PERMANENT_EXIT_CODES - prevented)}"
    assert TEMPORARY_EXIT_CODE not in prevented
    assert TEMPORARY_EXIT_CODE not in all_words(service, "Service", "SuccessExitStatus")


def test_service_restarts_are_bounded(service: Unit, timer: Unit) -> None:
    """The start limit holds every retry of one day's run yet has expired by the next day's run."""
    burst = int(last_value(service, "Unit", "StartLimitBurst"))
    window = timespan_seconds(last_value(service, "Unit", "StartLimitIntervalSec"))
    pause = timespan_seconds(last_value(service, "Service", "RestartSec"))
    run_timeout = timespan_seconds(last_value(service, "Service", "TimeoutStartSec"))
    jitter = timespan_seconds(last_value(timer, "Timer", "RandomizedDelaySec"))
    assert burst >= 1 and pause > 0 and run_timeout > 0
    assert window > burst * (run_timeout + pause), "a failing run could restart forever"
    assert window < 24 * 3600 - jitter, "today's failures could refuse tomorrow's run"


def test_timer_runs_daily_with_jitter_and_catches_up(timer: Unit) -> None:
    """The timer fires daily, at a randomised moment, and catches up on runs missed while off."""
    assert last_value(timer, "Timer", "OnCalendar") == "daily"
    assert timespan_seconds(last_value(timer, "Timer", "RandomizedDelaySec")) > 0
    assert last_value(timer, "Timer", "Persistent").lower() in {"true", "yes", "on", "1"}
    assert "timers.target" in all_words(timer, "Install", "WantedBy")


# ---- template units: one instance per connection ----------------------------------------------

INSTANCE_SERVICE = ROOT / "systemd" / "aweber-job@.service"
INSTANCE_TIMER = ROOT / "systemd" / "aweber-job@.timer"
INSTANCE_SECRET_DROP_IN = ROOT / "systemd" / "aweber-job@.service.d" / "client-secret.conf"
# Settings that name the connection, and so differ from the single unit's; every other one is the same.
PER_INSTANCE = {
    ("Unit", "Description"),
    ("Service", "SyslogIdentifier"),
    ("Service", "EnvironmentFile"),
    ("Service", "StateDirectory"),
    ("Service", "RuntimeDirectory"),
}


def for_instance(value: str, instance: str) -> str:
    """A setting's value as systemd expands it for ``instance``: %i is the instance name, %% a percent sign.

    Any other specifier fails the test, so a new one in the template is not silently left unexpanded here."""
    specifiers = set(re.findall(r"%(.)", value))
    assert specifiers <= {"i", "%"}, f"unexpected specifier in {value!r}: {sorted(specifiers)}"
    expanded = re.sub(r"%(.)", lambda match: instance if match.group(1) == "i" else "%", value)
    return expanded


@pytest.fixture(scope="module")
def instance_service() -> Unit:
    """The parsed template service."""
    return parse_unit(INSTANCE_SERVICE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def instance_timer() -> Unit:
    """The parsed template timer."""
    return parse_unit(INSTANCE_TIMER.read_text(encoding="utf-8"))


@pytest.fixture(params=["public client", "confidential client"])
def instance_unit_copies(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Copies of the template units whose ExecStart runs a job that exists on this machine, with the template's
    client-secret drop-in beside them for a confidential client."""
    copy_units(tmp_path, INSTANCE_SERVICE, INSTANCE_TIMER,
               INSTANCE_SECRET_DROP_IN if request.param == "confidential client" else None)
    return tmp_path


def test_instance_units_pass_systemd_analyze_verify(systemd_analyze: str, instance_unit_copies: Path) -> None:
    """An instance of each template (aweber-job@acme.service and .timer) loads in systemd-analyze verify with no
    error or warning about it."""
    service_copy = instance_unit_copies / "aweber-job@acme.service"
    timer_copy = instance_unit_copies / "aweber-job@acme.timer"
    result = run_analyze(systemd_analyze, "verify", str(service_copy), str(timer_copy), cwd=instance_unit_copies)
    output = result.stdout + result.stderr
    about_ours = [line for line in output.splitlines() if "aweber-job@" in line or str(instance_unit_copies) in line]
    assert result.returncode == 0 and not about_ours, f"systemd-analyze verify exited {result.returncode}:\n{output}"


def test_instance_sandbox_exposure_is_at_most_1_5(systemd_analyze: str, instance_unit_copies: Path) -> None:
    """systemd-analyze security rates an instance's sandbox 1.5 or lower, like the single service's."""
    result = run_analyze(systemd_analyze, "security", "--offline=true", "--no-pager",
                         str(instance_unit_copies / "aweber-job@acme.service"), cwd=instance_unit_copies)
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for aweber-job@acme\.service: (\d+(?:\.\d+)?)", output)
    assert match is not None, (
        f"no exposure level in systemd-analyze security output (exit {result.returncode}):\n{output}"
    )
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{output}"


def test_the_instance_service_is_the_single_service_but_for_the_connection_settings(
    service: Unit, instance_service: Unit
) -> None:
    """Hardening, retries, time limits and the program are the single service's, setting for setting; only the
    description, the log name, the env file and the two directories differ, and each of those names %i."""
    for section in ("Unit", "Service"):
        keys = set(service.get(section, {})) | set(instance_service.get(section, {}))
        for key in sorted(keys):
            single = service.get(section, {}).get(key)
            instance = instance_service.get(section, {}).get(key)
            if (section, key) in PER_INSTANCE:
                assert instance and all("%i" in value for value in instance), f"[{section}] {key}={instance}"
            else:
                assert instance == single, f"[{section}] {key}=: template {instance}, single unit {single}"
    assert "Install" not in instance_service, "the timer starts the service; the service has no [Install]"


def test_the_instance_timer_is_the_single_timer_for_one_connection(timer: Unit, instance_timer: Unit) -> None:
    """The template timer runs daily with the single timer's jitter and catch-up; only its description differs,
    naming the connection."""
    assert "%i" in last_value(instance_timer, "Unit", "Description")
    assert {**instance_timer, "Unit": {}} == {**timer, "Unit": {}}
    assert instance_timer["Unit"].keys() == {"Description"}


def test_the_instance_drop_in_passes_the_connections_own_secret() -> None:
    """The template's drop-in passes /etc/aweber-job/NAME.client-secret as the credential the job reads, and the
    template alone loads none (a public app's instance starts without a secret file)."""
    drop_in = parse_unit(INSTANCE_SECRET_DROP_IN.read_text(encoding="utf-8"))
    assert drop_in == {"Service": {"LoadCredential": [f"{CREDENTIAL_NAME}:/etc/aweber-job/%i.client-secret"]}}
    service = parse_unit(INSTANCE_SERVICE.read_text(encoding="utf-8"))
    for key in ("LoadCredential", "LoadCredentialEncrypted", "SetCredential", "SetCredentialEncrypted"):
        assert service["Service"].get(key, []) == [], f"{INSTANCE_SERVICE.name} sets {key}="


def instance_paths(service: Unit, drop_in: Unit, instance: str) -> dict[str, str]:
    """The files and directories that instance ``instance`` reads or writes, as absolute paths."""
    return {
        "env file": for_instance(last_value(service, "Service", "EnvironmentFile").lstrip("-"), instance),
        "state directory": "/var/lib/" + for_instance(last_value(service, "Service", "StateDirectory"), instance),
        "runtime directory": "/run/" + for_instance(last_value(service, "Service", "RuntimeDirectory"), instance),
        "client secret": for_instance(last_value(drop_in, "Service", "LoadCredential").split(":", 1)[1], instance),
    }


def overlaps(one: str, other: str) -> bool:
    """Whether two paths are the same or one lies inside the other."""
    return one == other or one.startswith(other.rstrip("/") + "/") or other.startswith(one.rstrip("/") + "/")


def test_two_instances_and_the_single_unit_share_no_file_or_directory(service: Unit, instance_service: Unit) -> None:
    """aweber-job@acme and aweber-job@globex read their own env file and secret and keep their own state and runtime
    directories, none inside another's or the single unit's (systemd gives a state directory and all it holds
    to its unit's user at every start, so a nested one would change hands)."""
    drop_in = parse_unit(INSTANCE_SECRET_DROP_IN.read_text(encoding="utf-8"))
    acme = instance_paths(instance_service, drop_in, "acme")
    globex = instance_paths(instance_service, drop_in, "globex")
    assert acme["env file"] == "/etc/aweber-job/acme.env"
    single = [
        "/var/lib/" + last_value(service, "Service", "StateDirectory"),
        "/run/" + last_value(service, "Service", "RuntimeDirectory"),
        last_value(service, "Service", "EnvironmentFile").lstrip("-"),
        "/etc/aweber-job/client-secret",
    ]
    for what in acme:
        assert not overlaps(acme[what], globex[what]), f"acme and globex share their {what}: {acme[what]}"
        for path in single:
            assert not overlaps(acme[what], path), f"acme's {what} {acme[what]} overlaps the single unit's {path}"
    assert all(path.startswith("/etc/aweber-job/") for path in (acme["env file"], acme["client secret"]))


def systemd_environment(service: Unit, instance: str, root: Path, program_env: Mapping[str, str]) -> dict[str, str]:
    """The environment systemd gives instance ``instance``, with /etc, /var/lib and /run under ``root``:
    Environment=, then the env file's KEY=value lines, then $STATE_DIRECTORY, $RUNTIME_DIRECTORY and, when the
    instance's secret file exists, $CREDENTIALS_DIRECTORY holding it as the credential."""
    env = dict(program_env)
    for assignment in service["Service"].get("Environment", []):
        key, _, value = assignment.partition("=")
        env[key] = value
    paths = instance_paths(service, parse_unit(INSTANCE_SECRET_DROP_IN.read_text(encoding="utf-8")), instance)
    env_file = root / paths["env file"].lstrip("/")
    for line in env_file.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    for variable, what in (("STATE_DIRECTORY", "state directory"), ("RUNTIME_DIRECTORY", "runtime directory")):
        directory = root / paths[what].lstrip("/")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        env[variable] = str(directory)
    secret = root / paths["client secret"].lstrip("/")
    if secret.exists():
        credentials = root / "run" / "credentials" / f"aweber-job@{instance}.service"
        credentials.mkdir(parents=True, mode=0o700)
        shutil.copyfile(secret, credentials / CREDENTIAL_NAME)
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
    return env


def test_two_instances_run_each_with_its_own_token_file(tmp_path: Path, standin: StandIn,
                                                         instance_service: Unit) -> None:
    """Two connections set up as the template says (acme a confidential app with its secret file, globex a
    public one) each refresh the token in their own state directory, in the environment systemd gives each."""
    etc = tmp_path / "etc" / "aweber-job"
    etc.mkdir(parents=True, mode=0o700)
    urls = f"AWEBER_TOKEN_URL={standin.token_url}\nAWEBER_API_URL={standin.api_url}\n"
    (etc / "acme.env").write_text(f"AWEBER_CLIENT_ID={CONFIDENTIAL_ID}\n{urls}", encoding="utf-8")
    (etc / "acme.client-secret").write_text(CONFIDENTIAL_SECRET + "\n", encoding="utf-8")
    (etc / "globex.env").write_text(f"AWEBER_CLIENT_ID={PUBLIC_ID}\n{urls}", encoding="utf-8")
    now = time.time()
    standin.add_account(1)
    standin.add_list(1, 2, "Newsletter", size=50, start=now - 90 * 86_400, end=now - 3 * 86_400)
    standin.add_subscribers(1, 2, [{"email": "new@example.com", "subscribed_at": now - 600}])
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path / "no-home")}
    envs = {name: systemd_environment(instance_service, name, tmp_path, base) for name in ("acme", "globex")}
    state = {name: Path(env["STATE_DIRECTORY"]) for name, env in envs.items()}
    clients = {"acme": CONFIDENTIAL_ID, "globex": PUBLIC_ID}
    for name, client in clients.items():
        grant = standin.issue_tokens(client)
        state[name].joinpath("tokens.json").write_text(json.dumps({**grant, "expires_at": now + 7200}),
                                                       encoding="utf-8")
    before = {name: state[name].joinpath("tokens.json").read_text(encoding="utf-8") for name in envs}

    acme = subprocess.run([*runnable_job_command(), "run"], env=envs["acme"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)

    assert acme.returncode == 0, acme.stderr
    acme_tokens = json.loads(state["acme"].joinpath("tokens.json").read_text(encoding="utf-8"))
    assert acme_tokens["refresh_token"] in standin.live_refresh_tokens()
    assert state["acme"].joinpath("tokens.json").read_text(encoding="utf-8") != before["acme"]
    assert state["globex"].joinpath("tokens.json").read_text(encoding="utf-8") == before["globex"]
    assert set(os.listdir(state["acme"])) - {"tokens.json"}, "acme's task state and lock are not in its directory"
    assert os.listdir(state["globex"]) == ["tokens.json"], "acme's run wrote into globex's state directory"
    assert not (tmp_path / "no-home").exists()

    globex = subprocess.run([*runnable_job_command(), "run"], env=envs["globex"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)

    assert globex.returncode == 0, globex.stderr
    globex_tokens = json.loads(state["globex"].joinpath("tokens.json").read_text(encoding="utf-8"))
    assert globex_tokens["refresh_token"] in standin.live_refresh_tokens()
    assert json.loads(state["acme"].joinpath("tokens.json").read_text(encoding="utf-8")) == acme_tokens
    assert [json.loads(row)["email"] for row in globex.stdout.splitlines()] == ["new@example.com"]


# ---- crontab ------------------------------------------------------------------------------

# (lowest, highest, names) for minute, hour, day of month, month, day of week.
CRON_FIELDS = [
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (
        1,
        12,
        {
            name: n
            for n, name in enumerate(
                ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1
            )
        },
    ),
    (0, 7, {name: n for n, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
]
VARIABLE_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\s*=")
COMMAND_PREFIX_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")


def is_valid_cron_field(field: str, lowest: int, highest: int, names: dict[str, int]) -> bool:
    """Say whether one crontab time field is valid: ``*``, numbers, ranges, lists, steps, or a name."""
    if field.lower() in names:
        return True

    def number(text: str) -> int | None:
        return int(text) if text.isdigit() and lowest <= int(text) <= highest else None

    for item in field.split(","):
        base, slash, step = item.partition("/")
        if slash and not (step.isdigit() and int(step) >= 1):
            return False
        if base == "*":
            continue
        first, dash, last = base.partition("-")
        low, high = number(first), number(last) if dash else number(first)
        if low is None or high is None or low > high:
            return False
        if slash and not dash:
            return False
    return True


@pytest.mark.parametrize(
    ("field", "position", "valid"),
    [
        ("*", 0, True),
        ("23", 0, True),
        ("0-59/5", 0, True),
        ("*/15", 0, True),
        ("1,31,59", 0, True),
        ("60", 0, False),
        ("-1", 0, False),
        ("*/0", 0, False),
        ("5/10", 0, False),
        ("", 0, False),
        ("24", 1, False),
        ("0", 2, False),
        ("31", 2, True),
        ("jan", 3, True),
        ("13", 3, False),
        ("7", 4, True),
        ("8", 4, False),
        ("Mon", 4, True),
        ("mon-fri", 4, False),
        ("5-1", 4, False),
    ],
)
def test_cron_field_validator(field: str, position: int, valid: bool) -> None:
    """The field checker used on crontab.example accepts cron syntax and rejects mistakes."""
    lowest, highest, names = CRON_FIELDS[position]
    assert is_valid_cron_field(field, lowest, highest, names) is valid


def crontab_entries() -> Iterator[tuple[int, str]]:
    """Yield (line number, line) for each job line: not a comment, blank or variable assignment."""
    for number, line in enumerate(CRONTAB.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not VARIABLE_ASSIGNMENT.match(stripped):
            yield number, stripped


def cron_program(command: str) -> str:
    """Return the program a cron command runs: its first word after any VAR=value prefixes."""
    words = command.split()
    while words and COMMAND_PREFIX_ASSIGNMENT.fullmatch(words[0]):
        words.pop(0)
    assert words, f"no program in cron command {command!r}"
    return words[0]


def test_crontab_lines_are_daily_schedules_with_absolute_programs() -> None:
    """Each crontab job line has five valid time fields, an absolute program path and --quiet."""
    entries = list(crontab_entries())
    assert entries, f"{CRONTAB.name} has no job line"
    for number, line in entries:
        where = f"{CRONTAB.name}:{number}: {line}"
        fields = line.split(None, 5)
        assert len(fields) == 6, f"expected five time fields and a command: {where}"
        for field, (lowest, highest, names) in zip(fields[:5], CRON_FIELDS, strict=True):
            assert is_valid_cron_field(field, lowest, highest, names), f"bad field {field!r}: {where}"
        command = fields[5]
        assert cron_program(command).startswith("/"), f"cron's PATH is minimal, use an absolute path: {where}"
        assert "--quiet" in command.split(), f"without --quiet cron mails every success: {where}"
        assert not re.search(r"(?<!\\)%", command), f"cron turns a bare % into a newline: {where}"


def test_crontab_sets_the_environment_cron_lacks() -> None:
    """The crontab sets SHELL, PATH, MAILTO and AWEBER_ENV_FILE, the last one to an absolute path."""
    assignments = dict(
        (name.strip(), value.strip())
        for name, _, value in (
            line.strip().partition("=")
            for line in CRONTAB.read_text(encoding="utf-8").splitlines()
            if VARIABLE_ASSIGNMENT.match(line.strip())
        )
    )
    assert assignments.get("SHELL") == "/bin/sh"
    assert "/usr/bin" in assignments.get("PATH", "").split(":")
    assert assignments.get("MAILTO"), "an empty MAILTO= throws the job's error messages away"
    assert assignments.get("AWEBER_ENV_FILE", "").startswith("/")


def test_crontab_and_service_run_the_documented_install_path(service: Unit) -> None:
    """The cron line, the unit's ExecStart and every path to the script in them name one location."""
    assert exec_start_argv(service)[0] == INSTALLED_PROGRAM
    for _, line in crontab_entries():
        assert cron_program(line.split(None, 5)[5]) == INSTALLED_PROGRAM
    for path in (SERVICE, CRONTAB):
        mentioned = set(re.findall(r"(?<![^\s=])[^\s=]*/bin/aweber-job\b", path.read_text(encoding="utf-8")))
        assert mentioned == {INSTALLED_PROGRAM}, f"{path.name} names {sorted(mentioned)}"


def crontab_variables() -> dict[str, str]:
    """The NAME=value lines of crontab.example, as cron would put them in the job's environment."""
    return {
        name.strip(): value.strip()
        for name, _, value in (
            line.strip().partition("=")
            for line in CRONTAB.read_text(encoding="utf-8").splitlines()
            if VARIABLE_ASSIGNMENT.match(line.strip())
        )
    }


def test_the_crontab_line_with_only_its_paths_edited_works_on_the_first_day(tmp_path: Path, standin: StandIn) -> None:
    """crontab.example's line, with the user's home and the program's path put in, exits 0, prints nothing
    (so cron mails nothing) and appends the new subscribers to the output file in a directory it creates."""
    home = tmp_path / "you"
    home.mkdir()
    variables = crontab_variables()
    (_, line), *_ = crontab_entries()
    program = runnable_job_command()
    command = line.split(None, 5)[5].replace(INSTALLED_PROGRAM, shlex.join(program)).replace("/home/you", str(home))
    env_file = Path(variables["AWEBER_ENV_FILE"].replace("/home/you", str(home)))
    env_file.parent.mkdir(parents=True, mode=0o700)
    env_file.write_text(
        f"AWEBER_CLIENT_ID={CONFIDENTIAL_ID}\n"
        f"AWEBER_CLIENT_SECRET={CONFIDENTIAL_SECRET}\n"
        f"AWEBER_TOKEN_URL={standin.token_url}\n"
        f"AWEBER_API_URL={standin.api_url}\n",
        encoding="utf-8",
    )
    env_file.chmod(0o600)  # "Keep it 0600", as the crontab's comment says
    # Where the crontab's comment says `login` leaves the token file for a cron user.
    token_file = home / ".local" / "state" / "aweber-job" / "tokens.json"
    token_file.parent.mkdir(parents=True)
    grant = standin.issue_tokens(CONFIDENTIAL_ID)
    token_file.write_text(json.dumps({**grant, "expires_at": time.time() + 7200}), encoding="utf-8")
    token_file.chmod(0o600)
    now = time.time()
    standin.add_account(1)
    standin.add_list(1, 2, "Newsletter", size=50, start=now - 90 * 86_400, end=now - 3 * 86_400)
    standin.add_subscribers(1, 2, [{"email": "new@example.com", "subscribed_at": now - 600}])

    # cron's environment: its own few variables and those the crontab sets, nothing from a login shell.
    cron_env = {"HOME": str(home), "LOGNAME": "you", **variables, "AWEBER_ENV_FILE": str(env_file)}
    result = subprocess.run([variables["SHELL"], "-c", command], env=cron_env, cwd=home,
                            capture_output=True, text=True, timeout=60, check=False)

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    words = shlex.split(command)
    output = Path(words[words.index("--output") + 1])
    assert [json.loads(row)["email"] for row in output.read_text(encoding="utf-8").splitlines()] == [
        "new@example.com"]
    assert stat.S_IMODE(output.parent.stat().st_mode) == 0o700
    assert json.loads(token_file.read_text(encoding="utf-8"))["refresh_token"] in standin.live_refresh_tokens()
