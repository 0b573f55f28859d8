"""A stand-in AWeber on loopback for tests, ``aweber-job demo`` and benchmarks (standard library only).

It plays AWeber's OAuth 2 endpoints (refresh-token rotation, authorization code with PKCE,
revoke) and the part of the REST API the job uses (accounts, lists, subscribers, find), with
AWeber's pagination, validation, error envelopes and rate limit; lists of any size are generated
lazily. Faults can be injected per request, and every request is counted and logged without
secrets. Run it in a thread with :class:`StandIn`. Tests and benchmarks also run it as a process
(``python -m tests.support.standin``, driven through ``/_control/``); that control plane lives with
them, not in the package, and plugs in through ``StandIn(control_handler=...)``.
"""

from job.standin.faults import RETRY_LATER_403_MESSAGES, Fault
from job.standin.server import StandIn
from job.standin.state import DEFAULT_CLIENTS, DEFAULT_SCOPE

__all__ = ["DEFAULT_CLIENTS", "DEFAULT_SCOPE", "RETRY_LATER_403_MESSAGES", "Fault", "StandIn"]
