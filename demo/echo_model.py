"""The ``echo`` Triton model: a plain KServe v2 tensor model, no language.

| | name | type | shape (per request, after the batch dimension) |
|---|---|---|---|
| input | INPUT0 | FP32 | [-1] |
| output | OUTPUT0 | FP32 | [-1], equal to INPUT0 |

max_batch_size is 64, so a client sends shape [batch, n], e.g. [1, 4].
"""

from __future__ import annotations

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.proxy.types import Request

from idlegrid.common.errors import Unavailable

BATCH_SIZE_MAX = 64

INPUTS = (Tensor(name="INPUT0", dtype=np.float32, shape=(-1,)),)
OUTPUTS = (Tensor(name="OUTPUT0", dtype=np.float32, shape=(-1,)),)
CONFIG = ModelConfig(batching=True, max_batch_size=BATCH_SIZE_MAX)


class EchoModel:
    def __init__(self, *, fail: bool = False, fail_after: int = -1) -> None:
        self._fail = fail
        self._fail_after = fail_after  # >= 0: serve this many requests, then fail
        self._served = 0

    def infer(self, requests: list[Request]) -> list[dict[str, np.ndarray]]:
        """pytriton inference callable: one response per request."""
        if self._fail or 0 <= self._fail_after <= self._served:
            raise Unavailable("demo node is in failing mode")
        self._served += len(requests)
        return [{"OUTPUT0": np.asarray(r["INPUT0"], dtype=np.float32)} for r in requests]
