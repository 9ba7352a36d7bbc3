"""gRPC servicer of the scheduler."""

from __future__ import annotations

import asyncio

from idlegrid.scheduler.jobs import Jobs
from idlegrid.scheduler.metadata import MetadataFetcher
from idlegrid.scheduler.v1 import scheduler_pb2 as spb
from idlegrid.scheduler.v1 import scheduler_pb2_grpc

STREAM_BUFFER_MAX = 256


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, jobs: Jobs, metadata: MetadataFetcher) -> None:
        self._jobs = jobs
        self._metadata = metadata

    async def Infer(self, request, context):
        return await self._jobs.run(request)

    async def InferStream(self, request, context):
        queue: asyncio.Queue[spb.InferChunk | None] = asyncio.Queue(maxsize=STREAM_BUFFER_MAX)

        async def emit(chunk: spb.InferChunk) -> None:
            await queue.put(chunk)

        async def produce() -> None:
            try:
                await self._jobs.run(request, emit)
            finally:
                await queue.put(None)

        task = asyncio.create_task(produce())
        try:
            while (chunk := await queue.get()) is not None:
                yield chunk
            await task  # raises the job's error, if any
        finally:
            if not task.done():
                task.cancel()  # the client left: the job cancels the node's request and bills what it got
                await asyncio.gather(task, return_exceptions=True)

    async def GetModelMetadata(self, request, context):
        return await self._metadata.get(request)
