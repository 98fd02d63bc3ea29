"""simulator: serve the Kuaidi100 protocol simulator the embedded default tracks against."""

import signal
import threading

import click

from app.cli.base import EXIT_OK, settings


@click.command(help="快递100 模拟器 / serve the Kuaidi100 protocol simulator the embedded default tracks against.",
               epilog="TRACKING_PROVIDER=simulator uses it; SIMULATOR_* settings apply. 'start --service all' runs it.")
@click.option("--port", type=int, default=None, help="default: SIMULATOR_PORT")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0 in a container other containers reach by SIMULATOR_HOST)")
def simulator(port: int | None, host: str) -> int:
    from app.core.config import SIMULATOR_ACCOUNT
    from app.services.carriers.simulator import CarrierSimulator, SimulatorServer

    current = settings()
    carrier = CarrierSimulator(*SIMULATOR_ACCOUNT, error_rate=current.simulator_error_rate,
                               rate_limit=current.simulator_rate_limit, pace=current.simulator_pace)
    server = SimulatorServer(carrier, port=port or current.simulator_port,
                             latency=current.simulator_latency_ms / 1000, host=host).start()
    click.echo(f"Kuaidi100 simulator at {server.url}")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
    return EXIT_OK


COMMANDS = [simulator]
