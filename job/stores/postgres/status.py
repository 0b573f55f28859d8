"""What ``aweber-job status`` and ``connections list`` show of connections in the store: no network to AWeber."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from job.auth.tokens import fingerprint, format_expiry
from job.errors import EXIT_OK
from job.logs import REDACTOR, utc_time
from job.stores.postgres.common import ConnectionInfo, ConnectionView


def iso(at: float | None) -> str | None:
    """A database time as ``connections list`` and ``status`` show it; None stays None (JSON null)."""
    return utc_time(at) if at is not None else None


def row_of(info: ConnectionInfo) -> dict[str, Any]:
    """One connection's public fields, as ``connections list --json`` prints them."""
    return {
        "name": info.name,
        "account_id": info.account_id,
        "access_expires_at": iso(info.access_expires_at),
        "last_run_at": iso(info.last_run_at),
        "last_exit_code": info.last_exit_code,
        "next_run_at": iso(info.next_run_at),
        "lease_holder": info.lease_holder,
        "encrypted": info.encrypted,
        "revoked": info.revoked,
        "waiting_for_person": info.waiting_for_person,
    }


@dataclass
class ConnectionStatus:
    """``status`` of one connection (:class:`job.stores.base.StatusView`): fingerprints, expiry, lease, marker."""

    view: ConnectionView
    description: str
    now: float = field(default_factory=time.time)
    exit_code: int = EXIT_OK

    def report(self) -> dict[str, Any]:
        """The fields ``status --json`` prints, warnings included."""
        info, tokens, now = self.view.info, self.view.tokens, self.now
        report: dict[str, Any] = {"connection": info.name, "store": self.description, **row_of(info)}
        warnings: list[str] = []
        if tokens is not None:
            REDACTOR.add(*tokens.secrets())
            report["shape"] = tokens.shape
            report["oauth1"] = tokens.oauth1 is not None
            report["access_token_fingerprint"] = fingerprint(tokens.access_token) if tokens.access_token else None
            if tokens.oauth1 is None:
                report["refresh_token_fingerprint"] = fingerprint(tokens.refresh_token)
                report["expires_in_seconds"] = (
                    round(tokens.expires_at - now, 1) if tokens.expires_at is not None else None
                )
                report["scope"] = tokens.scope
        if not info.encrypted and not info.revoked:
            warnings.append(
                "the tokens are stored unencrypted: set AWEBER_STORE_KEY, then run aweber-job store rotate-key"
            )
        if self.view.marker:
            warnings.append(self.view.marker)
        report["warnings"] = warnings
        return report

    def render(self, *, as_json: bool) -> str:
        report = self.report()
        if as_json:
            return json.dumps(report, sort_keys=True) + "\n"
        info, tokens = self.view.info, self.view.tokens
        lines = [f"{'connection:':<15} {info.name} in {self.description}"]
        if tokens is not None and tokens.oauth1 is None:
            lines += [
                f"{'shape:':<15} {tokens.shape}",
                f"{'access token:':<15} sha256:{report['access_token_fingerprint']}",
                f"{'refresh token:':<15} sha256:{report['refresh_token_fingerprint']}",
                f"{'access expires:':<15} "
                + (format_expiry(tokens.expires_at, self.now) if tokens.expires_at is not None else "unknown"),
            ]
        elif tokens is not None:
            lines.append(f"{'shape:':<15} OAuth 1.0a: the tokens do not expire")
        for key in ("account_id", "last_run_at", "last_exit_code", "next_run_at", "lease_holder"):
            if report.get(key) is not None:
                lines.append(f"{key.replace('_', ' ') + ':':<15} {report[key]}")
        lines.append(f"{'encrypted:':<15} {'yes' if info.encrypted else 'no'}")
        if info.revoked:
            lines.append(f"{'revoked:':<15} yes (aweber-job connections remove {info.name})")
        lines += [f"warning:        {w}" for w in report["warnings"]]
        return "\n".join(lines) + "\n"
