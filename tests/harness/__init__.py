"""The one test harness.

- :func:`eventually`: the one way to wait for a condition (polling.py).
- :data:`POOL`: the session's demo Tritons, shared by options (tritons.py).
- ``tests.harness.stack.start_stack``: the one builder for in-process
  services, with views over it for the registry alone (registry.py) and for
  the gateway's REST API (rest.py).

This package imports no service, so that importing :func:`eventually` costs
nothing and a service in the middle of a change breaks only its own tests.
"""

from tests.harness.basics import TOKEN, make_config, new_database
from tests.harness.polling import WAIT_S, eventually
from tests.harness.tritons import POOL, TritonPool

__all__ = ["POOL", "TOKEN", "WAIT_S", "TritonPool", "eventually", "make_config", "new_database"]
