"""The embedded store's process: nx-27017's wire-protocol handler served on a Unix socket.

nx-27017 itself binds only TCP, which every local account can reach. Here its connection handler is
served with asyncio's Unix-socket server instead: the socket is created mode 0600 inside a 0700
directory, so only the service's own user can connect. Run by livedmd (server/embedded.py) as
`python -m livedm.server.store_server --data-dir D --socket S`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

from nx_27017.handler import NeoSQLiteHandler
from nx_27017.server import handle_client


class _Sections(list[Any]):
    """A message's sections that print as a count: nx-27017 0.8 puts an insert's sections in a debug
    f-string, built even when debug logging is off, which formats every document's bytes (0.4 s of the
    store's time when the walk state of a million files is written)."""

    def __str__(self) -> str:
        return f"<{len(self)} sections>"

    __repr__ = __str__


class Handler(NeoSQLiteHandler):
    def handle_insert(self, msg: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return super().handle_insert({**msg, "sections": _Sections(msg["sections"])})


async def serve(data_dir: str, socket_path: str) -> None:
    handler = Handler(data_dir=data_dir)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # a leftover of a store that died; its directory is ours alone

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle_client(reader, writer, handler)

    old_umask = os.umask(0o177)  # the socket is born 0600: no window in which others may connect
    try:
        server = await asyncio.start_unix_server(on_client, path=socket_path)
    finally:
        os.umask(old_umask)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("livedm.store").info("serving %s on %s", data_dir, socket_path)
    async with server:
        await stop.wait()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="livedm-store", description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(process)d] %(message)s")
    asyncio.run(serve(args.data_dir, args.socket))


if __name__ == "__main__":
    main()
