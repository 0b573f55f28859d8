#!/usr/bin/env python
"""The usual way to find new subscribers, as AWeber's own Python examples do it: the benchmarks' yardstick.

Built the way a careful user following aweber/public-api-examples/python would build it
(docs/aweber-api.md §5): a requests-oauthlib ``OAuth2Session`` that refreshes by itself when the saved
token's ``expires_at`` has passed, client id and secret sent in the refresh body through
``auto_refresh_kwargs``, and a ``token_updater`` that rewrites ``credentials.json`` with the new
token; ``get_collection`` follows ``next_collection_link`` and gathers every entry; every
subscriber of every list is fetched and the ones subscribed after ``--since`` are kept on the
client. New subscribers go out as JSON lines.

It is the comparison, not part of the product: requests-oauthlib is only in the ``bench`` extra.
requests-oauthlib refuses plain http unless ``OAUTHLIB_INSECURE_TRANSPORT=1`` is set in the
environment; the benchmark sets it for this process only, to reach the stand-in on loopback.

``--rate-limit-retry SCALE`` adds AWeber's ``get_with_retry`` helper (from
``python/get-broadcast-opens-clicks``) to each page: on a 403 "rate limit" answer it sleeps
``2**i`` seconds (times SCALE, for a benchmark whose rate-limit window is scaled down) and tries
again, at most ``MAX_RETRIES`` times. Without it a 403 ends the walk, as ``raise_for_status`` does
in AWeber's examples.

Exit status: 0 done, 1 an HTTP error ended the walk. A summary line goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests
from requests_oauthlib import OAuth2Session

# AWeber's value (get-broadcast-opens-clicks): 2**6 s reaches past the 60-second block.
MAX_RETRIES = 6


class Baseline:
    """The example script's module-level code, gathered so that it can be given its URLs and files."""

    def __init__(self, credentials_path: Path, token_url: str, retry_scale: float | None) -> None:
        self.credentials_path = credentials_path
        with open(credentials_path, encoding="utf-8") as handle:
            credentials = json.load(handle)
        self.client_id: str = credentials["client_id"]
        self.client_secret: str = credentials["client_secret"]
        self.retry_scale = retry_scale
        self.responses = 0
        self.rate_limited = 0
        self.session = OAuth2Session(
            client_id=self.client_id,
            token=credentials["token"],
            auto_refresh_url=token_url,
            auto_refresh_kwargs={"client_id": self.client_id, "client_secret": self.client_secret},
            token_updater=self.token_updater,
        )
        self.session.hooks["response"].append(self._count)

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.responses += 1
        if response.status_code == 403 and "rate limit" in response.text.lower():
            self.rate_limited += 1

    def token_updater(self, token: dict[str, Any]) -> None:
        """Rewrite credentials.json with the new token, as AWeber's examples do (in place, not atomically)."""
        with open(self.credentials_path, "w", encoding="utf-8") as creds_file:
            json.dump({"client_id": self.client_id, "client_secret": self.client_secret, "token": token}, creds_file)
        print("Token was refreshed. Updated credentials.json with your new credentials", file=sys.stderr)

    def get_with_retry(self, url: str) -> requests.Response:
        """AWeber's helper: retry only a 403 whose message says "rate limit", sleeping 2**i between tries."""
        scale = 1.0 if self.retry_scale is None else self.retry_scale
        for i in range(1, MAX_RETRIES + 1):
            response: requests.Response = self.session.get(url)
            # only retry on a 403 (forbidden) status code with a rate limit error
            if response.status_code != 403:
                return response
            body = response.json()
            if "rate limit" not in body["error"]["message"].lower():
                return response
            if i < MAX_RETRIES:
                # wait longer between every attempt
                time.sleep(2**i * scale)
        return response

    def get_collection(self, url: str) -> list[dict[str, Any]]:
        """AWeber's helper: every entry of a collection, page after page through next_collection_link."""
        collection: list[dict[str, Any]] = []
        next_url: str | None = url
        while next_url:
            if self.retry_scale is None:
                response: requests.Response = self.session.get(next_url)
            else:
                response = self.get_with_retry(next_url)
            response.raise_for_status()
            body = response.json()
            collection.extend(body["entries"])
            # if there is a next link, there are more pages to retrieve
            next_url = body.get("next_collection_link") or None
        return collection


def parse_instant(text: str) -> datetime:
    """An ISO 8601 timestamp as an aware datetime (no offset means UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def find_new_subscribers(baseline: Baseline, api_url: str, since: datetime, output: Any) -> int:
    """Walk every subscriber of every list and write those subscribed after ``since``; return how many."""
    found = 0
    accounts = baseline.get_collection(f"{api_url.rstrip('/')}/accounts")
    for account in accounts:
        for mailing_list in baseline.get_collection(account["lists_collection_link"]):
            subscribers = baseline.get_collection(mailing_list["subscribers_collection_link"])
            for subscriber in subscribers:
                if parse_instant(subscriber["subscribed_at"]) > since:
                    row = {
                        "account_id": account["id"],
                        "list_id": mailing_list["id"],
                        "list_name": mailing_list["name"],
                        "id": subscriber["id"],
                        "email": subscriber["email"],
                        "name": subscriber.get("name"),
                        "status": subscriber["status"],
                        "subscribed_at": subscriber["subscribed_at"],
                    }
                    output.write(json.dumps(row) + "\n")
                    found += 1
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the baseline once; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--credentials", type=Path, required=True, help="credentials.json (AWeber's example shape)")
    parser.add_argument("--token-url", required=True)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--since", required=True, help="ISO 8601 instant: report subscribed_at > since")
    parser.add_argument("--output", default="-", help="where the JSON lines go (default stdout)")
    parser.add_argument("--rate-limit-retry", type=float, default=None, metavar="SCALE",
                        help="use AWeber's get_with_retry, sleeping 2**i * SCALE seconds")
    args = parser.parse_args(argv)

    since = parse_instant(args.since)
    baseline = Baseline(args.credentials, args.token_url, args.rate_limit_retry)
    started = time.perf_counter()
    output = sys.stdout if args.output == "-" else open(args.output, "a", encoding="utf-8")
    try:
        found = find_new_subscribers(baseline, args.api_url, since, output)
        status = 0
    except requests.HTTPError as error:
        print(f"baseline: {error}", file=sys.stderr)
        found, status = -1, 1
    finally:
        output.flush()
        if output is not sys.stdout:
            output.close()
    print(
        json.dumps({
            "new": found,
            "responses": baseline.responses,
            "rate_limited": baseline.rate_limited,
            "seconds": round(time.perf_counter() - started, 3),
        }),
        file=sys.stderr,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
