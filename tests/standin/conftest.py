"""Fixtures for the stand-in's own tests: a running stand-in, an HTTP session, a settable clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from job.standin import StandIn

CONF_ID = "cid-conf"
CONF_SECRET = "the-secret"
PUBLIC_ID = "cid-public"
CLIENTS: dict[str, str | None] = {CONF_ID: CONF_SECRET, PUBLIC_ID: None}
OOB = "urn:ietf:wg:oauth:2.0:oob"


class FakeClock:
    """A wall clock that stands still until a test moves it."""

    def __init__(self, now: float = 1_795_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> Iterator[StandIn]:
    """A running stand-in with one confidential and one public client."""
    with StandIn(clients=CLIENTS) as standin:
        yield standin


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session that is closed after the test."""
    with requests.Session() as session:
        yield session


def refresh(
    session: requests.Session,
    server: StandIn,
    refresh_token: str,
    *,
    client_id: str = CONF_ID,
    secret: str | None = CONF_SECRET,
    timeout: float = 5.0,
) -> requests.Response:
    """POST a refresh_token grant: Basic auth for a secret, client_id in the body otherwise."""
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if secret is None:
        data["client_id"] = client_id
        return session.post(server.token_url, data=data, timeout=timeout)
    return session.post(server.token_url, data=data, auth=(client_id, secret), timeout=timeout)


def bearer(token: object) -> dict[str, str]:
    """The Authorization header for an access token."""
    return {"Authorization": f"Bearer {token}"}
