"""`livedmd`: read the settings, start the store, serve."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from . import __version__
from .app import create_app
from .config import Config, ConfigError, add_flags, load
from .observe import configure_logging


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="livedmd", description="livedm daemon: live session data management over JSON-RPC.")
    parser.add_argument("--version", action="version", version=f"livedmd {__version__}")
    add_flags(parser)
    return parser.parse_args(argv)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS): the same aiohttp, less overhead per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def run_workers_only(app: web.Application) -> None:
    """The app's resources and workers without an HTTP server, until SIGTERM or SIGINT."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("livedm").info("worker-only mode: running jobs, no HTTP server")
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        config = load(flags, config_file=args.config)
    except ConfigError as exc:
        print(f"livedmd: {exc}", file=sys.stderr)
        return 2
    listener = configure_logging(config.log_level, config.log_format)
    try:
        return serve(config)
    finally:
        listener.stop()


def serve(config: Config) -> int:
    log = logging.getLogger("livedm")
    log.info("livedmd %s: state dir %s, database %s", __version__, config.state_dir,
             "embedded store" if not config.mongo_uri else "MongoDB (LIVEDM_MONGO_URI)")
    if config.data_roots:
        log.info("data roots: %s", ", ".join(config.data_roots))
    else:
        log.warning("no data roots are set: livedm may manage and delete files anywhere; set LIVEDM_DATA_ROOTS "
                    "(or data_roots) to the directories it is for")
    try:
        if config.worker_only:
            new_event_loop().run_until_complete(run_workers_only(create_app(config)))
        else:
            web.run_app(create_app(config), host=config.bind, port=config.port, print=None,
                        access_log=None, handler_cancellation=True, loop=new_event_loop())
    except OSError as exc:
        print(f"livedmd: cannot listen on {config.bind}:{config.port}: {exc.strerror}; "
              "pick another with --port or LIVEDM_PORT", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"livedmd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
