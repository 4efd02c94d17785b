"""A worker process for the memory benchmark: the real workflows and worker options, every
activity a stand-in (registration never arrives, so provisioning parks at wait_registration).

    python -m bench.worker_proc --address HOST:PORT --task-queue Q
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.common import make_worker
from bench.standins import StandIns


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--task-queue", required=True)
    p.add_argument("--ext", type=float, default=0.01)
    a = p.parse_args()
    client = await Client.connect(a.address, data_converter=pydantic_data_converter)
    standins = StandIns(client, ext=a.ext, db=0.0, signal_on_launch=False)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with make_worker(client, a.task_queue, standins.activities()):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
