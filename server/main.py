"""`livedmd`: read the settings, start the store, serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from . import __version__
from .app import create_app
from .appkeys import CONNECTIONS, FATAL
from .auth import reset_admin_token
from .config import Config, ConfigError, add_flags, load
from .connections import GuardedSite
from .embedded import EmbeddedStore
from .observe import configure_logging
from .processes import notify
from .statedir import StateDirBusy, StateDirLock, prepare_state_dir
from .store import Store, StoreUnavailable

log = logging.getLogger("livedm")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="livedmd", description="livedm daemon: live session data management over JSON-RPC.")
    parser.add_argument("--version", action="version", version=f"livedmd {__version__}")
    parser.add_argument("--reset-admin-token", action="store_true",
                        help="make a new token for the 'admin' user (revoking its older ones), write it to "
                             "<state_dir>/admin.token and exit; livedmd must not be running on the state dir")
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
    runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True,
                           keepalive_timeout=config.keepalive_timeout_s)
    await runner.setup()
    try:
        if config.worker_only:
            log.info("worker-only mode: running jobs, no HTTP server")
        else:
            await serve_http(runner, app, config)
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


async def serve_http(runner: web.AppRunner, app: web.Application, config: Config) -> None:
    # The listen backlog holds a burst of connections until they are accepted (and, over the cap, closed).
    backlog = max(128, min(config.max_connections, 4096))
    site = GuardedSite(runner, config.bind, config.port, guard=app[CONNECTIONS], backlog=backlog)
    try:
        await site.start()
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {config.bind}:{config.port}: {exc.strerror}; pick another "
                           "with --port or LIVEDM_PORT") from None
    log.info("serving http://%s:%d (the page: /ui); at most %d connections", config.bind, site.bound_port,
             config.max_connections)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "reset_admin_token")}
    try:
        config = load(flags, config_file=args.config)
    except ConfigError as exc:
        print(f"livedmd: {exc}", file=sys.stderr)
        return 2
    if args.reset_admin_token:
        return reset_admin(config)
    if not config.data_roots and not config.trial:
        print("livedmd: no data roots are set, so livedm could manage and delete files anywhere: set "
              "LIVEDM_DATA_ROOTS (or data_roots in the config file) to the directories it is for, separated by "
              "':'; for a trial on your own machine, pass --trial (or LIVEDM_TRIAL=true)", file=sys.stderr)
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
        for root in config.data_roots:
            if not os.path.isdir(root):
                log.warning("data root %s is not a directory (a typo, or not mounted?): nothing in it can be "
                            "managed", root)
    else:
        log.warning("trial mode, no data roots: livedm may manage and delete files anywhere but system and "
                    "state dirs; set LIVEDM_DATA_ROOTS (or data_roots) before sharing this server")
    if config.hook_enable:
        log.info("state-change hook: %s", config.hook_path or "none, though enabled: set hook_path")
    loop = new_event_loop()
    app = create_app(config)
    try:
        loop.run_until_complete(run(app, config))
    except RuntimeError as exc:
        print(f"livedmd: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    fatal = app.get(FATAL) or []
    if fatal:  # e.g. the embedded store kept dying: exit non-zero, so systemd restarts the unit
        print(f"livedmd: {'; '.join(fatal)}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


# --- livedmd --reset-admin-token -------------------------------------------------------------------

def reset_admin(config: Config) -> int:
    """A new token for `admin`, with livedmd stopped: the state dir locked, the embedded store (if used)
    started here and stopped after. Exit 0, or 1 with the reason."""
    state_dir = Path(config.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner_uid = state_dir.stat().st_uid
        if owner_uid != os.geteuid():  # files made now would lock the service's own user out of them
            print(f"livedmd: the state dir {state_dir} belongs to uid {owner_uid}: run --reset-admin-token as that "
                  f"user (sudo -u <user> livedmd --state-dir {state_dir} --reset-admin-token)", file=sys.stderr)
            return 1
        prepare_state_dir(config)  # the same checks as at start: no one else can swap it
        with StateDirLock(state_dir), _database(config) as store:
            revoked = reset_admin_token(store, config.admin_token_path, f"livedmd --reset-admin-token (uid "
                                                                        f"{os.geteuid()})")
    except StateDirBusy as exc:
        running = str(exc).split(";")[0]  # "the state dir ... is in use by livedmd pid N"
        print(f"livedmd: {running}: stop it first (systemctl stop livedmd), then run --reset-admin-token again",
              file=sys.stderr)
        return 1
    except (OSError, RuntimeError, StoreUnavailable) as exc:
        print(f"livedmd: cannot reset the admin token: {exc}", file=sys.stderr)
        return 1
    print(f"livedmd: a new API token for 'admin' is in {config.admin_token_path} (mode 0600); "
          f"{revoked} older admin token(s) revoked")
    return 0


@contextlib.contextmanager
def _database(config: Config) -> Iterator[Store]:
    embedded = None if config.mongo_uri else EmbeddedStore(config.state_dir)
    try:
        uri = config.mongo_uri or embedded.start()  # type: ignore[union-attr]
        store = Store.connect(uri, config.mongo_db, selection_timeout_s=10.0)
        try:
            store.ensure_indexes()
            yield store
        finally:
            store.close()
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
