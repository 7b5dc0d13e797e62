"""``python -m emulator.amqtt_broker -c CONFIG.yaml``: the embedded MQTT broker (amqtt) as a
well-behaved qnet child.

amqtt's own command turns SIGINT into a KeyboardInterrupt that can surface inside a client
callback (a traceback in broker.log) and dies by SIGTERM (exit -15). Here SIGTERM and SIGINT
both shut the broker down cleanly and exit 0, also while it is still starting.
"""

from __future__ import annotations

import os
import signal


def _exit_now(signum: int, frame: object) -> None:
    os._exit(0)  # still importing or starting: nothing to shut down yet


signal.signal(signal.SIGTERM, _exit_now)
signal.signal(signal.SIGINT, _exit_now)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402

from amqtt.broker import Broker  # noqa: E402
from amqtt.errors import BrokerError  # noqa: E402
from amqtt.utils import read_yaml_config  # noqa: E402


async def serve(config: dict) -> None:
    """Run the broker until SIGTERM or SIGINT, then shut it down."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    broker = Broker(config, loop=loop)
    await broker.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description="qnet's embedded MQTT broker (amqtt)")
    parser.add_argument("-c", dest="config", required=True, help="amqtt YAML configuration")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] :: %(levelname)s - %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(read_yaml_config(args.config)))
    except (BrokerError, OSError) as exc:
        logging.getLogger("qnet.broker").error("broker failed: %s", exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
