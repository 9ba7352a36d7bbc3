"""Request builders for the scheduler tests."""

from __future__ import annotations

import os

import numpy as np

from idlegrid.scheduler.v1 import scheduler_pb2 as spb

LLM = "smollm2-135m-instruct"


def chat(consumer: bytes, text: str = "Say hi.", *, max_tokens: int = 8, job: bytes | None = None,
         node: str | None = None, timeout_ms: int = 0) -> spb.InferRequest:
    return spb.InferRequest(
        job_id=job or os.urandom(16), consumer_account_id=consumer, model=LLM, timeout_ms=timeout_ms,
        text=spb.TextGeneration(messages=[spb.ChatMessage(role="user", content=text)], max_tokens=max_tokens,
                                temperature=0.0, seed=1),
        constraints=spb.Constraints(labels={"node": node} if node else {}))


def echo(consumer: bytes, values=(1.0, 2.0, 3.0), *, job: bytes | None = None, node: str | None = None):
    arr = np.asarray([values], dtype="<f4")
    return spb.InferRequest(
        job_id=job or os.urandom(16), consumer_account_id=consumer, model="echo",
        tensors=spb.TensorInput(inputs=[spb.Tensor(name="INPUT0", datatype="FP32", shape=list(arr.shape),
                                                   contents=arr.tobytes())]),
        constraints=spb.Constraints(labels={"node": node} if node else {}))


def reason_of(err) -> str | None:
    for k, v in err.trailing_metadata() or ():
        if k == "idlegrid-reason":
            return v
    return None
