"""The soak's partner traffic: a few concurrent clients against the gateway,
each with its own consumer account and key, mixing chat, streaming chat,
tensor (echo) inference, account reads and admin top-ups.

Every answered inference is kept with its ``x-idlegrid-job-id``, so the
soak can match it to its usage record. A top-up whose answer was lost (the
gateway died under it) is retried afterwards with the same idempotency key
until it has an answer, so the money each consumer was given is known.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from collections import Counter

import aiohttp

from idlegrid.demo.names import ECHO_MODEL_NAME, LLM_MODEL_NAME

OPS = {"chat": 3, "stream": 3, "tensor": 6, "account": 2, "topup": 1}  # relative weights
REQUEST_TIMEOUT_S = 60.0
ERROR_BACKOFF_S = (0.05, 0.3)  # after a failed request, so a dead gateway is not spun on
MAX_TOKENS = 8
TOPUP_MICROS = 1_000_000
TOPUP_RETRIES_MAX = 50
ECHO_BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                                    "data": [1.0, 2.0, 3.0, 4.0]}]}).encode()


@dataclasses.dataclass(frozen=True)
class Answer:
    job_id: uuid.UUID
    account: str
    kind: str
    latency_ms: float
    at_s: float  # when the answer was complete, since the soak's t0


@dataclasses.dataclass
class Consumer:
    account: str  # UUID text, as the gateway shows it
    key: str
    topped_up_micros: int = 0  # confirmed top-ups
    unsure_topups: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (idempotency key, amount)


@dataclasses.dataclass
class Traffic:
    """Shared state of the clients; ``gate`` closed holds new requests back."""

    url: str
    admin_key: str
    t0: float
    answers: list[Answer] = dataclasses.field(default_factory=list)
    outcomes: Counter = dataclasses.field(default_factory=Counter)  # "chat:200", "tensor:conn", ...
    in_flight: int = 0
    gate: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # set while nothing is in flight
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # set: the clients end early

    def __post_init__(self) -> None:
        self.gate.set()
        self.idle.set()

    async def client(self, consumer: Consumer, seed: int, deadline: float) -> None:
        rng = random.Random(seed)
        ops, weights = list(OPS), list(OPS.values())
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(self.url, timeout=timeout) as s:
            while time.monotonic() < deadline and not self.stop.is_set():
                await self.gate.wait()
                op = rng.choices(ops, weights)[0]
                self.in_flight += 1
                self.idle.clear()
                try:
                    ok = await self.one(s, consumer, op, rng)
                finally:
                    self.in_flight -= 1
                    if not self.in_flight:
                        self.idle.set()
                if not ok:
                    await asyncio.sleep(rng.uniform(*ERROR_BACKOFF_S))

    async def one(self, s: aiohttp.ClientSession, c: Consumer, op: str, rng: random.Random) -> bool:
        t = time.monotonic()
        try:
            status, job = await getattr(self, f"_{op}")(s, c, rng)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            self.outcomes[f"{op}:{type(e).__name__}"] += 1
            return False
        self.outcomes[f"{op}:{status}"] += 1
        if status == 200 and job is None and op in ("chat", "stream", "tensor"):
            self.outcomes[f"{op}:200_without_job_id"] += 1
        elif status == 200 and job is not None:
            now = time.monotonic()
            self.answers.append(Answer(job, c.account, op, (now - t) * 1000, now - self.t0))
        return status == 200

    def _auth(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    async def _chat(self, s, c: Consumer, rng) -> tuple[int, uuid.UUID | None]:
        body = {"model": LLM_MODEL_NAME, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": f"Say a word about {rng.randrange(1000)}."}]}
        async with s.post("/v1/chat/completions", json=body, headers=self._auth(c.key)) as r:
            data = await r.read()
            if r.status != 200:
                return r.status, None
            choices = json.loads(data).get("choices") or []
            return (r.status, _job(r)) if choices else (-1, None)

    async def _stream(self, s, c: Consumer, rng) -> tuple[int, uuid.UUID | None]:
        body = {"model": LLM_MODEL_NAME, "max_tokens": MAX_TOKENS, "stream": True,
                "messages": [{"role": "user", "content": f"Count to {rng.randrange(2, 9)}."}]}
        async with s.post("/v1/chat/completions", json=body, headers=self._auth(c.key)) as r:
            if r.status != 200:
                await r.read()
                return r.status, None
            done = False
            async for line in r.content:
                if line.strip() == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data:") and b'"error"' in line:
                    return -2, None  # an error event in the stream: not an answer
            return (200, _job(r)) if done else (-1, None)  # -1: the stream ended without [DONE]

    async def _tensor(self, s, c: Consumer, rng) -> tuple[int, uuid.UUID | None]:
        headers = {**self._auth(c.key), "content-type": "application/json"}
        async with s.post(f"/v2/models/{ECHO_MODEL_NAME}/infer", data=ECHO_BODY, headers=headers) as r:
            data = await r.read()
            if r.status != 200:
                return r.status, None
            outputs = json.loads(data).get("outputs") or []
            return (r.status, _job(r)) if outputs else (-1, None)

    async def _account(self, s, c: Consumer, rng) -> tuple[int, None]:
        async with s.get("/v1/account", headers=self._auth(c.key)) as r:
            await r.read()
            return r.status, None

    async def _topup(self, s, c: Consumer, rng) -> tuple[int, None]:
        key = f"soak-{uuid.UUID(int=rng.getrandbits(128))}"
        try:
            status = await topup(s, self.admin_key, c.account, TOPUP_MICROS, key)
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            c.unsure_topups.append((key, TOPUP_MICROS))
            raise
        if status == 200:
            c.topped_up_micros += TOPUP_MICROS
        elif status >= 500:
            c.unsure_topups.append((key, TOPUP_MICROS))
        return status, None

    async def settle_topups(self, consumers: list[Consumer]) -> int:
        """Retries each unsure top-up with its key until it is answered;
        returns how many stayed unknown (0 unless the gateway stays down)."""
        unknown = 0
        async with aiohttp.ClientSession(self.url, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as s:
            for c in consumers:
                for key, amount in c.unsure_topups:
                    for _ in range(TOPUP_RETRIES_MAX):
                        try:
                            status = await topup(s, self.admin_key, c.account, amount, key)
                        except (TimeoutError, aiohttp.ClientError):
                            status = 0
                        if status == 200:
                            c.topped_up_micros += amount
                            break
                        if 400 <= status < 500:
                            break  # refused: it never happened
                        await asyncio.sleep(ERROR_BACKOFF_S[1])
                    else:
                        unknown += 1
                c.unsure_topups.clear()
        return unknown


def _job(r: aiohttp.ClientResponse) -> uuid.UUID | None:
    raw = r.headers.get("x-idlegrid-job-id")
    return uuid.UUID(raw) if raw else None


async def topup(s: aiohttp.ClientSession, admin_key: str, account: str, amount: int, key: str) -> int:
    async with s.post(f"/v1/admin/accounts/{account}/topup", json={"amount_micros": amount, "idempotency_key": key},
                      headers={"authorization": f"Bearer {admin_key}"}) as r:
        await r.read()
        return r.status
