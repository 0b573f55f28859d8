"""The README's commands: the first two set up and run the demo and the tests, every `aweber-job` command in it
parses, the service's venv comes from a Python the service can see, and the redirect URI is explained before
the first login."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from job.auth.oauth import OOB_REDIRECT_URI
from job.cli import build_parser
from job.deployment import EXAMPLES
from job.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```sh\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
# `aweber-job` run as a program, bare or from a bin/ directory (not aweber-job.service, /path/to/aweber-job,
# StateDirectory=aweber-job), up to the end of its command: a pipe, a redirection, a comment, `&&` or the line's end.
INVOCATION = re.compile(r"(?:^|(?<=\s)|(?<=bin/))aweber-job(?=\s|$)([^|>#&;\n\\]*)", flags=re.MULTILINE)


# The pages the README sends a reader to: their commands must run as shown too.
DOC_BLOCKS = [block for page in sorted((REPO / "docs").glob("*.md"))
              for block in re.findall(r"^```sh\n(.*?)^```", page.read_text(encoding="utf-8"),
                                      flags=re.MULTILINE | re.DOTALL)]


def invocations() -> list[str]:
    """The arguments of every aweber-job command in the shell blocks of the README and docs/."""
    return [match.group(1).strip() for block in [*BLOCKS, *DOC_BLOCKS] for match in INVOCATION.finditer(block)]


def test_the_first_two_commands_set_up_and_run_the_demo_then_the_tests() -> None:
    """The README's first shell block makes a venv and runs `aweber-job demo`; the second installs the test
    extra and runs pytest."""
    demo, tests = BLOCKS[0], BLOCKS[1]
    assert "python3 -m venv .venv" in demo and demo.rstrip().endswith("aweber-job demo")
    assert "python3 -m venv .venv" in tests and "'.[test]'" in tests and tests.rstrip().endswith("pytest -q")


def test_every_aweber_job_command_in_the_readme_parses() -> None:
    """Each `aweber-job ...` in the README's shell blocks is a command line the job accepts."""
    found = invocations()
    assert len(found) >= 8
    for arguments in found:
        try:
            args = build_parser().parse_args(shlex.split(arguments))
        except UsageError as exc:
            pytest.fail(f"aweber-job {arguments}: {exc}")
        if args.command == "example":
            assert args.kind in EXAMPLES


def test_the_service_venv_is_made_from_a_python_that_protect_home_does_not_hide() -> None:
    """The README makes /opt/aweber-job/venv with /usr/bin/python3 and says why: ProtectHome=yes hides a Python
    under /home or /root (pyenv's), which the venv links to."""
    venv_lines = [line for block in BLOCKS for line in block.splitlines() if "-m venv /opt/aweber-job/venv" in line]
    assert venv_lines
    for line in venv_lines:
        assert re.search(r"(^|\s)/usr/bin/python3 -m venv /opt/aweber-job/venv", line), line
    install = README[README.index("## Install for real"):README.index("### Authorize once")]
    assert "ProtectHome=yes" in install and "pyenv" in install


def test_the_redirect_uri_is_explained_before_the_first_login() -> None:
    """Before the first `aweber-job login` block, the README says the redirect URI must be registered exactly as
    sent (the out-of-band URN by default, or --redirect-uri https://localhost) and what AWeber says otherwise."""
    first_login = min(README.index(f"```sh\n{block}") for block in BLOCKS if "aweber-job login" in block)
    before = README[:first_login]
    assert OOB_REDIRECT_URI == "urn:ietf:wg:oauth:2.0:oob"
    assert f"`{OOB_REDIRECT_URI}`" in before
    assert "`--redirect-uri https://localhost`" in before
    assert '"Invalid redirect URI"' in before
