"""celery_beat_manager.py: run the service's processes (the seed's 使用方法)."""

import argparse
import signal
import sys
import threading

from app.core.broker import BrokerError, EmbeddedBroker
from app.core.config import ConfigError, Settings, load_settings
from app.manager.processes import beat_process, spawn, terminate, wait_any, worker_process
from app.manager.tail import follow_in_background

LOGLEVELS = ["debug", "info", "warning", "error"]
STOP_TIMEOUT = 30.0


class ManagerError(Exception):
    """An expected failure: reported as one line and a non-zero exit, never a traceback."""


def _stop_on_sigterm(*_):
    raise KeyboardInterrupt


def _services(settings: Settings, args) -> list:
    chosen = {"beat": ["beat"], "worker": ["worker"], "all": ["worker", "beat"]}[args.service]
    builders = {
        "beat": lambda: beat_process(settings, args.loglevel),
        "worker": lambda: worker_process(settings, args.loglevel, args.queues, args.concurrency),
    }
    return [builders[name]() for name in chosen]


def foreground(settings: Settings, args) -> int:
    """Run the chosen services (and the embedded broker) until Ctrl-C; stop them all on the way out."""
    broker = EmbeddedBroker(settings) if settings.uses_embedded_broker else None
    children, stop_tailing = {}, threading.Event()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # A shell starting us in the background ignores SIGINT for us; Ctrl-C must stop us anyway.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if broker:
            broker.start()
            print(f"embedded broker ready at {broker.url}", flush=True)
        processes = _services(settings, args)
        follow_in_background({p.name: p.logfile for p in processes}, stop_tailing)
        for process in processes:
            children[process.name] = spawn(process)
            print(f"started {process.name} (pid {children[process.name].pid}), log {process.logfile}", flush=True)
        exited = wait_any(children)
        code = children[exited].returncode
        print(f"{exited} exited with code {code}; stopping the rest", file=sys.stderr, flush=True)
        return code or 1
    except KeyboardInterrupt:
        print("stopping…", flush=True)
        return 0
    finally:
        # Beat first (no new work is sent), then the worker finishes what it holds, broker last.
        for name in ("beat", "worker"):
            if name in children:
                terminate(children[name], args.timeout)
        stop_tailing.set()
        if broker:
            broker.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celery_beat_manager.py",
        description="Celery Beat 管理脚本 / manage the scheduled-jobs service (beat, worker, embedded broker).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("foreground", help="前台运行 / run in this terminal until Ctrl-C",
                              description="Run the chosen services in this terminal; Ctrl-C stops everything.")
    run.add_argument("--service", choices=["beat", "worker", "all"], default="beat",
                     help="what to run: beat (default), worker, or all = broker + beat + worker")
    run.add_argument("--loglevel", type=str.lower, choices=LOGLEVELS, default=None,
                     help="log level (default: LOG_LEVEL, else info)")
    run.add_argument("--queues", type=lambda v: [q for q in v.split(",") if q], default=None,
                     help="worker queues, comma separated (default: all five)")
    run.add_argument("--concurrency", type=int, default=None, help="worker processes (default: WORKER_CONCURRENCY)")
    run.add_argument("--timeout", type=float, default=STOP_TIMEOUT,
                     help=f"seconds to wait for a graceful stop before killing (default {STOP_TIMEOUT:.0f})")
    run.set_defaults(handler=foreground)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        args.loglevel = args.loglevel or settings.log_level
        return args.handler(settings, args)
    except (ConfigError, BrokerError, ManagerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
