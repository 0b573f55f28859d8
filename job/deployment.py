"""The deployment files shipped in the package, for ``aweber-job example``.

The unit files (the single service and the per-connection template), their client-secret drop-ins, the
crontab line and the env example live once, in the repository (``systemd/``, ``crontab.example``,
``.env.example``); ``job/examples/`` holds links to them, which a wheel turns into copies, so an install
from a wheel (pip, pipx) has them too. They name the program as the README installs it; :func:`fill_in`
puts the running one in its place.
"""

from __future__ import annotations

import os

# kind (what `aweber-job example` takes) -> file under job/examples/
EXAMPLES = {
    "service": "aweber-job.service",
    "timer": "aweber-job.timer",
    "credential": "client-secret.conf",
    "crontab": "crontab.example",
    "env": "env.example",
    # The template units: one instance per connection (aweber-job@acme.service), and their client-secret drop-in.
    "instance-service": "aweber-job@.service",
    "instance-timer": "aweber-job@.timer",
    "instance-credential": "instance-client-secret.conf",
}
# The kinds that are a service unit, whose program ProtectHome=yes must not hide.
SERVICE_KINDS = ("service", "instance-service")
# Where the shipped files say the console script is installed.
DOCUMENTED_PROGRAM = "/opt/aweber-job/venv/bin/aweber-job"
# What the unit's ProtectHome=yes makes invisible to the service.
HIDDEN_BY_PROTECT_HOME = ("/home", "/root", "/run/user")


def example_text(kind: str) -> str:
    """The shipped file for ``kind`` (a key of EXAMPLES), as it is in the repository."""
    from importlib.resources import files

    return (files("job") / "examples" / EXAMPLES[kind]).read_text(encoding="utf-8")


def running_program(argv0: str, executable: str) -> str:
    """The command that runs this installation: the console script when it can be found, else ``python -m job``."""
    import shlex

    if os.path.basename(argv0) == "aweber-job" and os.path.isfile(argv0):
        return shlex.quote(os.path.abspath(argv0))
    # `python -m job` from a virtual environment or pipx: the script sits beside the interpreter.
    beside = os.path.join(os.path.dirname(executable), "aweber-job")
    if os.path.isfile(beside):
        return shlex.quote(beside)
    return f"{shlex.quote(executable)} -m job"


def fill_in(text: str, program: str) -> str:
    """``text`` with every mention of the documented program path replaced by ``program``."""
    return text.replace(DOCUMENTED_PROGRAM, program)


def hidden_from_the_service(program: str, executable: str) -> list[tuple[str, str]]:
    """(path, the hidden directory it is under) for what the service needs but ProtectHome=yes hides.

    Looked at: the program, and the real interpreter behind it. A venv made with a Python under
    /root or /home (pyenv, a user's own build) links to it, and the service then fails to start
    with 203/EXEC although the venv itself is under /opt.
    """
    found = []
    for path in dict.fromkeys([program.split()[0], os.path.realpath(executable)]):
        for top in HIDDEN_BY_PROTECT_HOME:
            if path == top or path.startswith(top + "/"):
                found.append((path, top))
    return found
