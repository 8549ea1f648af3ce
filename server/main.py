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
from .systemd import notify

log = logging.getLogger("livedm")


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


async def run(app: web.Application, config: Config) -> None:
    """Start the app's resources and workers, then the HTTP server (unless worker-only); tell systemd
    it is ready; on SIGTERM or SIGINT tell it we stop, answer what is in flight, drain, exit."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        if config.worker_only:
            log.info("worker-only mode: running jobs, no HTTP server")
        else:
            try:
                await web.TCPSite(runner, config.bind, config.port).start()
            except OSError as exc:
                raise RuntimeError(f"cannot listen on {config.bind}:{config.port}: {exc.strerror}; pick another "
                                   "with --port or LIVEDM_PORT") from None
            log.info("serving http://%s:%d (the page: /ui)", config.bind, config.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        notify("READY=1")
        await stop.wait()
        log.info("stopping: finishing requests and jobs (up to %.0f s)", config.drain_s)
        notify("STOPPING=1")
    finally:
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
    log.info("livedmd %s: state dir %s, database %s", __version__, config.state_dir,
             "embedded store" if not config.mongo_uri else "MongoDB (LIVEDM_MONGO_URI)")
    if config.data_roots:
        log.info("data roots: %s", ", ".join(config.data_roots))
    else:
        log.warning("no data roots are set: livedm may manage and delete files anywhere; set LIVEDM_DATA_ROOTS "
                    "(or data_roots) to the directories it is for")
    loop = new_event_loop()
    try:
        loop.run_until_complete(run(create_app(config), config))
    except RuntimeError as exc:
        print(f"livedmd: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
