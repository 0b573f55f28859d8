"""Last of the survival suite: everything the job printed, logged, pinged and wrote in every scenario above
is scanned for every token, code and PKCE verifier the stand-ins issued or received and the client
secret, each as it is and JSON-escaped, URL-encoded and base64-encoded (and the client id and secret
of a Basic header) — zero hits.

The token file, its temporaries and rescue files are the only places tokens belong, and are skipped.
This module runs after the others (pytest takes the files in name order); run alone it scans what its own
runs produced, which are made at the highest verbosity in both log formats.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import quote, quote_plus, urlencode

import pytest

from tests.support.recorder import PingReceiver
from tests.survival.conftest import StandInFactory
from tests.survival.harness import (
    SECRETS,
    TALLY,
    SecretScanner,
    Workspace,
    basic_credentials,
    fingerprint,
    is_token_store_file,
)

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


@pytest.mark.parametrize("public", [False, True], ids=["confidential client", "public client (PKCE)"])
def test_login_runs_add_to_the_scan(
    public: bool, start_standin: StandInFactory, new_workspace: Callable[..., Workspace]
) -> None:
    """Real `aweber-job login` processes, fed the code at the prompt, at -vv in both log formats: their output,
    code and verifier join the scan, and the token file they write works."""
    standin = start_standin(list_size=3)
    tokens: set[str] = set()
    for log_format in ("text", "json"):
        ws = new_workspace(standin)
        ran = ws.login(public=public, args=["-vv", "--log-format", log_format], label=f"login-{log_format}")
        assert ran.returncode == 0, ran.stderr
        assert ran.stderr, "a -vv login logged nothing: the scan would prove little"
        assert ws.file_refresh_token() in standin.control.live_refresh_tokens()
        document = json.loads(ws.token_file.read_bytes())
        tokens |= {document["access_token"], document["refresh_token"]}
    # Two logins: two codes, and for the public client two verifiers, besides the tokens.
    codes_and_verifiers = set(standin.control.issued_secrets()) - tokens
    assert len(codes_and_verifiers) == (4 if public else 2), "the stand-in did not record the codes (and verifiers)"


def scan(values: Iterable[str], roots: Iterable[Path], outputs: Sequence[tuple[str, str]],
         pings: Sequence[tuple[str, bytes]]) -> tuple[dict[str, list[str]], int]:
    """Every scanned place and the fingerprints found there; and how many token-store files held a secret
    (those are skipped: tokens belong there)."""
    scanner = SecretScanner(values)
    places: dict[str, list[str]] = {}
    token_files_with_secrets = 0
    for where, text in outputs:
        places[f"output of {where}"] = scanner.find(text)
    for root in sorted(roots):
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            if is_token_store_file(path):
                # Tokens belong here; that the scan finds them in such files shows it would find a leak.
                token_files_with_secrets += bool(scanner.find(path.read_text("utf-8", errors="replace")))
                continue
            places[str(path)] = scanner.find(path.read_bytes().decode("utf-8", errors="replace"))
    for number, (ping_path, body) in enumerate(pings):
        text = ping_path + "\n" + body.decode("utf-8", errors="replace")
        places[f"ping {number} {ping_path}"] = scanner.find(text)
    return places, token_files_with_secrets


# Characters that every encoding treats differently: "/" (quote), " " and "+" (quote_plus), '"' and "\\"
# (JSON), and bytes whose base64 differs between the standard and URL-safe alphabets.
PLANTED = 'planted/secret "with" \\ spaces+plus?~\u00e9\u00ff\u00fe'


def test_the_scan_finds_a_planted_secret_in_every_encoding(tmp_path: Path) -> None:
    """A secret planted in a file, an output and a ping, in each encoded form (and a Basic header's pair),
    is found by the scan in every place — what the last test calls a failure."""
    # Written out here, not taken from the scanner's own list of forms.
    raw = PLANTED.encode("utf-8")
    pair = "planted-client:" + PLANTED
    forms = {
        "raw": PLANTED,
        "JSON-escaped": json.dumps(PLANTED)[1:-1],
        "JSON-escaped, UTF-8 kept": json.dumps(PLANTED, ensure_ascii=False)[1:-1],
        "quote": quote(PLANTED, safe=""),
        "quote keeping /": quote(PLANTED),
        "quote_plus": quote_plus(PLANTED),
        "base64": base64.b64encode(raw).decode(),
        "base64 unpadded": base64.b64encode(raw).decode().rstrip("="),
        "urlsafe base64": base64.urlsafe_b64encode(raw).decode(),
        "urlsafe base64 unpadded": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "Basic header": "Basic " + base64.b64encode(pair.encode("utf-8")).decode(),
    }
    assert len(set(forms.values())) == len(forms), "the planted secret does not tell the encodings apart"
    assert pair in basic_credentials("planted-client", PLANTED)
    root = tmp_path / "planted"
    root.mkdir()
    outputs, pings = [], []
    for n, (name, form) in enumerate(forms.items()):
        (root / f"{n}.log").write_text(f"line before\nsomething {form} after\n", encoding="utf-8")
        outputs.append((name, f"aweber-job: debug: {form}\n"))
        pings.append((f"/ping/{n}", f"last log lines: x{form}y".encode()))
    places, _ = scan([PLANTED, pair], [root], outputs, pings)
    missed = [place for place, found in places.items() if not found]
    assert missed == [], f"planted secret not found in: {missed}"
    assert {fp for found in places.values() for fp in found} <= {fingerprint(PLANTED), fingerprint(pair)}
    assert len(places) == 3 * len(forms)


def test_nothing_anywhere_holds_a_secret(ping_receiver: PingReceiver) -> None:
    """Zero hits: outputs, every file under every workspace (but token, temporary and rescue files), pings."""
    values = sorted(SECRETS.values)
    # The scan is only worth something when it knows many secrets and has much to look at.
    assert len(values) > 10
    places, token_files_with_secrets = scan(values, SECRETS.scan_roots, SECRETS.outputs,
                                          [(ping.path + "?" + urlencode(ping.query, doseq=True), ping.raw)
                                           for ping in ping_receiver.pings])
    assert ping_receiver.pings, "no run pinged: the pings were not scanned"
    assert token_files_with_secrets > 0, "the known secrets are not those in the token files"
    for found in places.values():
        TALLY.record(SCENARIO, "failed" if found else "survived")
    TALLY.note(SCENARIO, "secrets looked for", len(values))
    TALLY.note(SCENARIO, "pings among the places", len(ping_receiver.pings))
    hits = [f"{place}: {', '.join(found)}" for place, found in places.items() if found]
    assert hits == [], "secrets found (fingerprints): " + "; ".join(hits[:20])
