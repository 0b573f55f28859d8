"""The Kubernetes manifests (deploy/kubernetes/) and the Containerfile, checked offline.

Every manifest is validated against the Kubernetes OpenAPI schemas that kubernetes-validate ships (no
cluster, no network), strictly, so a misspelt field is an error rather than silently dropped by the API
server. The rest checks what the schemas cannot: the hardened pod, the shutdown timing against the
job's own settings, the command line against the job's own parser, and the variables against the list
the job reads. No container runtime is needed: the Containerfile is parsed, not built.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from job.cli import build_parser
from job.config import VARIABLES

yaml = pytest.importorskip("yaml")
kv_utils = pytest.importorskip("kubernetes_validate.utils")

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
CRONJOB = MANIFESTS / "cronjob.yaml"
CONFIGMAP = MANIFESTS / "configmap.yaml"
SECRET = MANIFESTS / "secret.yaml"
STORE_INIT = MANIFESTS / "store-init-job.yaml"
CONTAINERFILE = ROOT / "Containerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# The newest Kubernetes whose schemas the pinned kubernetes-validate ships; raise it with the package.
KUBERNETES_VERSION = "1.37.0"
# The variables that hold secrets: they belong in the Secret and nowhere else.
SECRET_VARIABLES = {"AWEBER_STORE", "AWEBER_STORE_KEY", "AWEBER_CLIENT_SECRET"}
NON_ROOT_UID = 10001


def _documents(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _one(path: Path) -> dict[str, Any]:
    (doc,) = _documents(path)
    return doc


def _configmap() -> dict[str, str]:
    data: dict[str, str] = _one(CONFIGMAP)["data"]
    return data


def _secret_keys() -> set[str]:
    secret = _one(SECRET)
    return set(secret.get("stringData", {})) | set(secret.get("data", {}))


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a CronJob or a Job."""
    job = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    spec: dict[str, Any] = job["template"]["spec"]
    return spec


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod_spec(workload)["containers"]
    return dict(container)


# Every workload that starts a pod: each gets the same hardening, settings and writable places.
WORKLOADS = [CRONJOB, STORE_INIT]


def _seconds(duration: str) -> int:
    """A duration as the ConfigMap writes it (`50m`, `1h`, `900`), read here independently of the job."""
    match = re.fullmatch(r"(\d+)([smh]?)", duration.strip())
    assert match, f"unexpected duration {duration!r}: extend this reader"
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


# -- the schemas --


@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_manifest_is_valid_for_kubernetes_strictly(path: Path) -> None:
    """Each document validates against the shipped schemas, with unknown fields refused."""
    documents = _documents(path)
    assert documents, f"{path} holds no document"
    for doc in documents:
        assert kv_utils.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION[:4]


def test_the_manifests_are_the_three_expected() -> None:
    """A new manifest gets looked at: a CronJob, the one-off Job, a ConfigMap and a Secret, nothing else."""
    kinds = sorted(doc["kind"] for path in MANIFESTS.glob("*.yaml") for doc in _documents(path))
    assert kinds == ["ConfigMap", "CronJob", "Job", "Secret"]


def test_the_validator_rejects_what_the_api_server_would() -> None:
    """The checker can fail: a misspelt field and a wrongly typed one are both refused."""
    misspelt = _one(CRONJOB)
    _pod_spec(misspelt)["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kv_utils.ValidationError):
        kv_utils.validate(misspelt, KUBERNETES_VERSION, strict=True)
    mistyped = _one(CRONJOB)
    mistyped["spec"]["jobTemplate"]["spec"]["parallelism"] = "three"
    with pytest.raises(kv_utils.ValidationError):
        kv_utils.validate(mistyped, KUBERNETES_VERSION, strict=True)


def test_validation_needs_no_network() -> None:
    """The command-line validator passes every manifest with no network at all (a fresh network namespace,
    where only loopback exists and is down): the schemas come with the package."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], capture_output=True, check=False).returncode:
        pytest.skip("cannot make a network namespace here (unshare -n needs root or user namespaces)")
    files = [str(path) for path in sorted(MANIFESTS.glob("*.yaml"))]
    result = subprocess.run(
        [unshare, "-n", sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, *files],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("INFO") == len(files), result.stdout


# -- the CronJob --


def test_one_job_at_a_time_with_several_pods_sharing_the_work() -> None:
    """Forbid overlapping Jobs; several pods, each running to completion; a bounded retry and history."""
    cronjob = _one(CRONJOB)
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["parallelism"] > 1
    assert job["completions"] == job["parallelism"]
    assert 0 <= job["backoffLimit"] <= 6
    assert _pod_spec(cronjob)["restartPolicy"] in {"Never", "OnFailure"}


def test_the_fields_the_schemas_leave_open_hold_values_kubernetes_knows() -> None:
    """The schemas type these as plain strings, so a misspelt value would pass them and fail only at apply
    time (or, for completionMode, be refused by the API server after the CronJob was created)."""
    cronjob = _one(CRONJOB)
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert cronjob["spec"]["concurrencyPolicy"] in {"Allow", "Forbid", "Replace"}
    assert job.get("completionMode", "NonIndexed") in {"NonIndexed", "Indexed"}
    assert _container(cronjob).get("imagePullPolicy", "IfNotPresent") in {"Always", "IfNotPresent", "Never"}
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        assert rule["action"] in {"FailJob", "FailIndex", "Ignore", "Count"}


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_the_pod_meets_the_restricted_pod_security_standard(path: Path) -> None:
    """Non-root as uid 10001, read-only root, no privilege escalation, every capability dropped and none
    added, the runtime's seccomp profile, and no service-account token."""
    workload = _one(path)
    pod = _pod_spec(workload)
    container = _container(workload)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == NON_ROOT_UID
    assert pod["securityContext"]["runAsGroup"] == NON_ROOT_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security.get("runAsNonRoot", True) is True
    assert security.get("runAsUser", NON_ROOT_UID) == NON_ROOT_UID
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security.get("privileged", False) is False
    assert security["capabilities"].get("drop") == ["ALL"]
    assert not security["capabilities"].get("add")
    assert security.get("seccompProfile", {"type": "RuntimeDefault"}) == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_memory_and_cpu_are_requested_and_memory_is_limited(path: Path) -> None:
    """The scheduler knows what the pod needs, and a leak cannot take the node."""
    resources = _container(_one(path))["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_the_job_finishes_its_shutdown_before_the_kill() -> None:
    """SIGTERM to SIGKILL is longer than the job's own shutdown grace, and the Job's deadline leaves the
    run its whole timeout plus that grace, so the job ends a run itself rather than being killed."""
    cronjob = _one(CRONJOB)
    config = _configmap()
    grace = _seconds(config["AWEBER_SHUTDOWN_GRACE"])
    for path in WORKLOADS:
        assert _pod_spec(_one(path))["terminationGracePeriodSeconds"] > grace, path.name
    deadline = cronjob["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert deadline > _seconds(config["AWEBER_RUN_TIMEOUT"]) + grace


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_the_writable_places_are_volumes_and_tmp_is_bounded_memory(path: Path) -> None:
    """With a read-only root, the state directory and /tmp must be mounted volumes; /tmp is in memory and
    bounded."""
    workload = _one(path)
    volumes = {volume["name"]: volume for volume in _pod_spec(workload)["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in _container(workload).get("volumeMounts", [])}
    state_dir = _configmap()["AWEBER_STATE_DIR"]
    assert state_dir in mounts, f"AWEBER_STATE_DIR {state_dir} is not a mounted volume"
    assert mounts[state_dir] in volumes
    assert "/tmp" in mounts
    tmp = volumes[mounts["/tmp"]]["emptyDir"]
    assert tmp["medium"] == "Memory"
    assert tmp["sizeLimit"]


def _run_options() -> set[str]:
    """The option strings `aweber-job run` accepts, from the job's own parser."""
    subparsers = next(action for action in build_parser()._actions
                      if isinstance(action, argparse._SubParsersAction))
    return {option for action in subparsers.choices["run"]._actions for option in action.option_strings}


def _check_command(argv: list[str], where: str) -> None:
    """argv is `run --all …` as the job's parser reads it.

    `run --all` is new: where the parser on this checkout does not know `--all` yet, only the words are
    checked (the first two are `run --all`, and `run` is a command the parser knows). Once it knows
    `--all`, the whole command line must parse.
    """
    assert argv[:2] == ["run", "--all"], f"{where}: {argv}"
    if "--all" not in _run_options():
        assert build_parser().parse_args(["run"]).command == "run", where
        return
    parsed = build_parser().parse_args(argv)
    assert parsed.command == "run", where
    assert parsed.all is True, where


def test_the_cronjob_runs_every_due_connection() -> None:
    """The container's arguments are `run --all --concurrency N`, N a positive number, read by the job's
    own parser; the image's entrypoint supplies the program."""
    container = _container(_one(CRONJOB))
    assert "command" not in container, "the image's ENTRYPOINT is aweber-job; arguments only"
    argv = container["args"]
    _check_command(argv, "cronjob.yaml args")
    assert "--concurrency" in argv
    assert int(argv[argv.index("--concurrency") + 1]) >= 1


def test_the_one_off_job_runs_store_init_once() -> None:
    """store-init-job.yaml runs `store init`, a command the job's parser accepts, and is not retried (the
    command is idempotent, but a failure should be read, not repeated)."""
    job = _one(STORE_INIT)
    assert "command" not in _container(job), "the image's ENTRYPOINT is aweber-job; arguments only"
    argv = _container(job)["args"]
    parsed = build_parser().parse_args(argv)
    assert (parsed.command, parsed.store_action) == ("store", "init")
    assert job["spec"]["backoffLimit"] == 0
    assert _pod_spec(job)["restartPolicy"] == "Never"


# -- the settings --


def test_every_variable_given_is_one_the_job_reads() -> None:
    """A typo in a key would be a setting silently ignored: every key is in job.config.VARIABLES."""
    given = set(_configmap()) | _secret_keys()
    for path in WORKLOADS:
        given |= {env["name"] for env in _container(_one(path)).get("env", []) if env["name"].startswith("AWEBER_")}
    unknown = given - set(VARIABLES)
    assert not unknown, f"variables the job does not read: {sorted(unknown)}"


def test_secrets_are_in_the_secret_and_only_there() -> None:
    """The Secret holds the secret variables; the ConfigMap holds none of the Secret's keys and no secret."""
    secret_keys = _secret_keys()
    config_keys = set(_configmap())
    assert secret_keys >= SECRET_VARIABLES
    assert not secret_keys & config_keys, f"in both: {sorted(secret_keys & config_keys)}"
    assert not SECRET_VARIABLES & config_keys


def test_the_example_secret_holds_placeholders_only() -> None:
    """Nobody can mistake the example for a working credential: every value says REPLACE, and the store
    key is not a usable Fernet key."""
    values = _one(SECRET)["stringData"]
    for key, value in values.items():
        assert "REPLACE" in value, f"{key} does not look like a placeholder"
    fernet = pytest.importorskip("cryptography.fernet")
    with pytest.raises(ValueError):
        fernet.Fernet(values["AWEBER_STORE_KEY"])


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_the_pod_takes_its_settings_from_the_configmap_and_the_secret(path: Path) -> None:
    """envFrom names the ConfigMap and the Secret defined beside it."""
    env_from = _container(_one(path))["envFrom"]
    config_maps = {source["configMapRef"]["name"] for source in env_from if "configMapRef" in source}
    secrets = {source["secretRef"]["name"] for source in env_from if "secretRef" in source}
    assert config_maps == {_one(CONFIGMAP)["metadata"]["name"]}
    assert secrets == {_one(SECRET)["metadata"]["name"]}


def test_the_shutdown_grace_and_state_dir_are_set() -> None:
    """The settings the pod's timing and read-only root depend on are not left to defaults."""
    config = _configmap()
    assert config["AWEBER_LOG_FORMAT"] == "json"
    for key in ("AWEBER_SHUTDOWN_GRACE", "AWEBER_RUN_TIMEOUT", "AWEBER_STATE_DIR", "AWEBER_RUN_INTERVAL"):
        assert config.get(key), key


# -- the Containerfile --


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions(CONTAINERFILE.read_text(encoding="utf-8"))
    starts = [index for index, (word, _) in enumerate(instructions) if word == "FROM"]
    assert len(starts) >= 2, "a builder stage and a runtime stage"
    return instructions[starts[-1]:]


def _exec_form(arguments: str) -> list[str]:
    import json

    value = json.loads(arguments)
    assert isinstance(value, list), f"not the exec (JSON) form: {arguments}"
    return [str(item) for item in value]


def test_the_image_runs_the_job_as_a_non_root_user() -> None:
    """The runtime stage is python:3.12-slim, ends as uid 10001 (the CronJob's runAsUser), and runs
    `aweber-job run --all` by default."""
    stage = _final_stage()
    assert stage[0][1].split()[0] == "python:3.12-slim"
    users = [arguments for word, arguments in stage if word == "USER"]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == NON_ROOT_UID == _pod_spec(_one(CRONJOB))["securityContext"]["runAsUser"]
    (entrypoint,) = [arguments for word, arguments in stage if word == "ENTRYPOINT"]
    assert _exec_form(entrypoint) == ["aweber-job"]
    (cmd,) = [arguments for word, arguments in stage if word == "CMD"]
    _check_command(_exec_form(cmd), "Containerfile CMD")


def test_the_image_installs_a_built_wheel_with_the_postgres_extra() -> None:
    """The builder makes wheels with `pip wheel`; the runtime installs aweber-job[postgres] from them with
    no index, an extra the project really defines, and installs no build tools."""
    instructions = _instructions(CONTAINERFILE.read_text(encoding="utf-8"))
    builder_runs = [arguments for word, arguments in instructions[:len(instructions) - len(_final_stage())]
                    if word == "RUN"]
    assert any("pip wheel" in run for run in builder_runs)
    runtime_runs = " ".join(arguments for word, arguments in _final_stage() if word == "RUN")
    installs = [shlex.split(part) for part in runtime_runs.split("&&") if "pip install" in part]
    assert installs, "the runtime stage installs nothing with pip"
    words = [word for install in installs for word in install]
    assert "--no-index" in words
    assert "aweber-job[postgres]" in words
    assert "postgres" in (metadata.metadata("aweber-job").get_all("Provides-Extra") or [])
    for tool in ("gcc", "build-essential", "apt-get install", "make "):
        assert tool not in runtime_runs, f"the runtime stage installs {tool.strip()}"


def test_python_writes_no_bytecode_on_the_read_only_root() -> None:
    """PYTHONDONTWRITEBYTECODE=1 in the runtime stage."""
    env = " ".join(arguments for word, arguments in _final_stage() if word == "ENV")
    assert re.search(r"(^|\s)PYTHONDONTWRITEBYTECODE=1(\s|$)", env), env


def _matches(path: str, pattern: str) -> bool:
    """One .dockerignore pattern against one path (`**/` matching at any depth)."""
    if pattern.startswith("**/"):
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern[3:]) or fnmatch.fnmatchcase(path, pattern[3:])
    return fnmatch.fnmatchcase(path, pattern)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out `path`, by Docker's rules as far as these plain patterns need:
    a pattern that matches the path or one of its parent directories leaves it out, the last match wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if any(_matches(prefix, pattern.lstrip("!")) for prefix in prefixes):
            result = not negate
    return result


def test_the_build_context_leaves_out_environments_history_and_caches() -> None:
    """.dockerignore keeps .venv, .git and caches out, but never what the wheel is built from: the package,
    pyproject.toml, the licence and the files job/examples links to."""
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".git", ".venv/bin/python", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                 "job/__pycache__", "job/__pycache__/cli.cpython-312.pyc", "aweber_job.egg-info"):
        assert _ignored(path, patterns), f"{path} would be sent to the build"
    kept = ["pyproject.toml", "README.md", "LICENSE", "job/cli.py"]
    kept += [str((ROOT / "job" / "examples" / link.readlink()).resolve().relative_to(ROOT))
             for link in (ROOT / "job" / "examples").iterdir() if link.is_symlink()]
    for path in kept:
        assert (ROOT / path).exists(), path
        assert not _ignored(path, patterns), f"{path} is needed by the wheel but left out of the build"
