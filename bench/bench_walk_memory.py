"""Walk a large stand-in list with ApiClient and show that the client's memory stays flat.

The stand-in runs as its own process (``python -m tests.support.standin``), so the figures printed are the
client's alone: requests made, wall time, and peak RSS (``resource.getrusage``) and current RSS
(``/proc/self/statm``) after 10 %, 50 % and 100 % of the entries. A walk that buffered the
collection would grow by the size of the list; a generator stays at one page.

    python bench/bench_walk_memory.py                 # 1,000,000 subscribers, 10,000 requests
    python bench/bench_walk_memory.py --size 25000    # quick: 250 requests
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from job.api.client import ApiClient

# The stand-in's process mode and its control client live with the tests, not in the package.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.standin import StandInControl  # noqa: E402

CLIENT_ID = "bench-client"
ACCOUNT_ID = 1
LIST_ID = 2
PORT_FILE_WAIT_SECONDS = 15.0


class FixedTokens:
    """A token source for one access token that lives longer than the benchmark."""

    def __init__(self, access_token: str) -> None:
        self.access_token = access_token

    def ensure_fresh(self, leeway_seconds: float) -> str:
        return self.access_token

    def authorize(self, method: str, url: str, params: object, *, leeway_seconds: float) -> dict[str, str]:
        """The bearer header for every request (the token outlives the benchmark)."""
        return {"Authorization": f"Bearer {self.ensure_fresh(leeway_seconds)}"}

    def refresh(self, reason: str) -> object:
        raise RuntimeError(f"unexpected refresh during the benchmark ({reason})")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident set size now, from /proc (0 where there is no /proc)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def start_standin(directory: Path, size: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m tests.support.standin`` with one list of ``size`` subscribers; return it and its base URL."""
    config = {
        "clients": {CLIENT_ID: None},
        "accounts": [{"id": ACCOUNT_ID, "lists": [{"id": LIST_ID, "name": "Bench", "size": size, "seed": 1}]}],
    }
    config_file = directory / "standin.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    port_file = directory / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.standin", "--port-file", str(port_file), "--config", str(config_file)],
        cwd=REPO,
    )
    deadline = time.monotonic() + PORT_FILE_WAIT_SECONDS
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the stand-in did not start")
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{int(port_file.read_text())}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="subscribers on the list (default 1,000,000)")
    parser.add_argument(
        "--rate-limit", type=int, default=1000,
        help="requests the client allows itself per --window seconds (default 1000)",
    )
    parser.add_argument("--window", type=float, default=1.0, help="pacing window in seconds (default 1.0)")
    arguments = parser.parse_args()
    if arguments.size < 1:
        parser.error("--size must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-walk-") as temporary:
        process, base_url = start_standin(Path(temporary), arguments.size)
        try:
            control = StandInControl(base_url)
            grant = control.issue_tokens(CLIENT_ID)
            session = requests.Session()
            session.headers["User-Agent"] = "aweber-job-bench"
            client = ApiClient(
                session,
                base_url=control.api_url,
                tokens=FixedTokens(str(grant["access_token"])),
                rate_limit_per_minute=arguments.rate_limit,
                refresh_leeway_seconds=300.0,
                timeout_seconds=30.0,
                retry_deadline_seconds=300.0,
                window_seconds=arguments.window,
            )
            checkpoints = {max(1, arguments.size * percent // 100): percent for percent in (10, 50, 100)}
            print(f"walking {arguments.size:,} entries; before: peak RSS {peak_rss_mib():.1f} MiB, "
                  f"current RSS {current_rss_mib():.1f} MiB")
            started = time.monotonic()
            seen = 0
            # Entries come in the order they were added (ascending ids): checking that order proves
            # "each once" without keeping the ids, which would itself grow with the list.
            previous_id = -1
            out_of_order = 0
            for entry in client.walk(f"/accounts/{ACCOUNT_ID}/lists/{LIST_ID}/subscribers"):
                seen += 1
                entry_id = int(entry["id"])
                out_of_order += entry_id <= previous_id
                previous_id = entry_id
                percent = checkpoints.get(seen)
                if percent is not None:
                    print(
                        f"{percent:>3}%: {seen:>9,} entries, {client.requests_made:>6,} requests, "
                        f"{time.monotonic() - started:7.2f} s, peak RSS {peak_rss_mib():6.1f} MiB, "
                        f"current RSS {current_rss_mib():6.1f} MiB"
                    )
            elapsed = time.monotonic() - started
            stats = control.stats()
        finally:
            process.terminate()
            process.wait(timeout=10)

    print(f"done: {seen:,} entries in {elapsed:.2f} s, {client.requests_made:,} requests made "
          f"(stand-in counted {stats['requests_total']}, rate limited {stats['rate_limited']}), "
          f"{seen / elapsed:,.0f} entries/s")
    print(f"entries out of order or repeated: {out_of_order}")
    ok = seen == arguments.size and out_of_order == 0 and client.requests_made == -(-arguments.size // 100)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
