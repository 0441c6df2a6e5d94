"""Graceful shutdown of the model server: requests in flight when SIGTERM comes are answered, promptly."""
import asyncio
import logging
import time

import aiohttp
import numpy as np
from aiohttp import web

from hardened_server.model_server import LoadedModel, build_app
from helpers import free_port, infer_body


class SlowModel(LoadedModel):
    """A forward pass that takes 0.5 s, so a request is surely inside it when shutdown starts."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        time.sleep(0.5)
        return np.full((len(x), 10), 0.1, np.float32)


def test_requests_in_flight_are_answered_before_the_model_server_stops():
    model = SlowModel(name="digits-demo", version="v1", digest="0" * 64, signer=None, architecture="cnn-8x8",
                      input_shape=[1, 8, 8], labels=[str(i) for i in range(10)], module=None, device="cpu")

    async def scenario():
        # the same runner settings as common.serve, whose SIGTERM handler calls runner.cleanup()
        runner = web.AppRunner(build_app(model, logger=logging.getLogger("test")), shutdown_timeout=10.0)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        async with aiohttp.ClientSession() as session:
            async def call():
                async with session.post(f"http://127.0.0.1:{port}/v2/models/digits-demo/infer",
                                        json=infer_body(np.zeros((1, 1, 8, 8)))) as resp:
                    return resp.status, await resp.json()

            calls = [asyncio.create_task(call()) for _ in range(3)]
            await asyncio.sleep(0.2)  # all three are waiting on the forward pass
            start = time.monotonic()
            await runner.cleanup()
            stopped_after = time.monotonic() - start
            return await asyncio.gather(*calls), stopped_after

    results, stopped_after = asyncio.run(scenario())
    assert [status for status, _ in results] == [200, 200, 200]
    assert all(body["outputs"][1]["data"] == ["0"] for _, body in results)
    assert stopped_after < 3.0  # the drain waited for the forward pass, not for the 10 s timeout
