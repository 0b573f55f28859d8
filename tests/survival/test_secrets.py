"""Last of the survival suite: everything the job printed, logged, pinged and wrote in every scenario above
is scanned for every token and code the stand-ins issued and the client secret — zero hits.

The token file, its temporaries and rescue files are the only places tokens belong, and are skipped.
This module runs after the others (pytest takes the files in name order); run alone it scans what its own
runs produced, which are made at the highest verbosity in both log formats.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.survival.conftest import StandInFactory
from tests.survival.harness import SECRETS, TALLY, PingReceiver, Workspace, find_secrets, is_token_store_file

SCENARIO = "secrets: output, logs, pings and files scanned for every issued token"


def test_debug_runs_in_both_log_formats_print_no_secret(
    start_standin: StandInFactory, new_workspace: Callable[..., Workspace]
) -> None:
    """The most talkative runs, refresh, run and status in text and JSON at -vv, add to what is scanned."""
    standin = start_standin(list_size=5)
    ws = new_workspace(standin)
    ws.seed_tokens()
    for log_format in ("text", "json"):
        for command in ("refresh", "run", "status"):
            ran = ws.run(["-vv", "--log-format", log_format, command], label=f"debug-{log_format}-{command}")
            assert ran.returncode == 0, ran.stderr
            assert ran.stderr or command == "status", "a -vv run logged nothing: the scan would prove little"
    ws.file_refresh_token()


def test_nothing_anywhere_holds_a_secret(ping_receiver: PingReceiver) -> None:
    """Zero hits: outputs, every file under every workspace (but token, temporary and rescue files), pings."""
    values = sorted(SECRETS.values)
    # The scan is only worth something when it knows many secrets and has much to look at.
    assert len(values) > 10
    places: dict[str, list[str]] = {}
    token_files_with_secrets = 0
    for where, text in SECRETS.outputs:
        places[f"output of {where}"] = find_secrets(text, values)
    for root in sorted(SECRETS.scan_roots):
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            if is_token_store_file(path):
                # Tokens belong here; that the scan finds them in such files shows it would find a leak.
                token_files_with_secrets += bool(find_secrets(path.read_text("utf-8", errors="replace"), values))
                continue
            places[str(path)] = find_secrets(path.read_bytes().decode("utf-8", errors="replace"), values)
    for number, (ping_path, body) in enumerate(ping_receiver.pings):
        text = ping_path + "\n" + body.decode("utf-8", errors="replace")
        places[f"ping {number} {ping_path}"] = find_secrets(text, values)
    assert ping_receiver.pings, "no run pinged: the pings were not scanned"
    assert token_files_with_secrets > 0, "the known secrets are not those in the token files"
    for found in places.values():
        TALLY.record(SCENARIO, "failed" if found else "survived")
    TALLY.note(SCENARIO, "secrets looked for", len(values))
    TALLY.note(SCENARIO, "pings among the places", len(ping_receiver.pings))
    hits = [f"{place}: {', '.join(found)}" for place, found in places.items() if found]
    assert hits == [], "secrets found (fingerprints): " + "; ".join(hits[:20])
