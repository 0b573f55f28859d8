"""Process mode: ``python -m tests.support.standin --port-file PATH [--config FILE]`` (from the repository root).

Starts the stand-in with its ``/_control/`` endpoints on 127.0.0.1, writes the port to PATH once
it is listening (atomically: a reader never sees a half-written file), and serves until SIGTERM
or SIGINT; then it stops, removes the port file and exits 0. A bad config exits 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tests.support.standin.config import load_config, standin_from_config


def write_port_file(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` through a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{port}\n", encoding="ascii")
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in until a signal asks it to stop; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.standin", description="Serve the stand-in AWeber.")
    parser.add_argument("--port-file", type=Path, required=True, help="where to write the port once listening")
    parser.add_argument("--config", type=Path, help="JSON file with clients, limits, accounts and lists")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: an ephemeral one)")
    parser.add_argument("--verbose", action="store_true", help="print method, path and status per request")
    arguments = parser.parse_args(argv)

    try:
        config = load_config(arguments.config) if arguments.config else {}
        if arguments.verbose:
            config["verbose"] = True
        standin = standin_from_config(config, enable_control=True, port=arguments.port)
    except ValueError as error:
        print(f"standin: {error}", file=sys.stderr)
        return 2

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    standin.start()
    try:
        write_port_file(arguments.port_file, standin.port)
        # Waking up now and then keeps the main thread responsive to signals on every platform.
        while not stopping.wait(0.5):
            pass
    finally:
        standin.stop()
        arguments.port_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
