"""The stand-in AWeber's process mode: ``python -m tests.support.standin``, driven through ``/_control/``.

Only tests and benchmarks start the stand-in as a process, so its control plane lives here and
not in the wheel: the JSON endpoints (:func:`handle_control`, installed through
``StandIn(control_handler=...)``), the client that drives them (:class:`StandInControl`), and the
config file that sets a stand-in up (:func:`standin_from_config`). Run it from the repository root.
"""

from tests.support.standin.config import load_config, standin_from_config
from tests.support.standin.control import StandInControl
from tests.support.standin.control_endpoints import handle_control

__all__ = ["StandInControl", "handle_control", "load_config", "standin_from_config"]
