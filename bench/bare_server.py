"""The baseline: a bare aiohttp handler answering a constant JSON-RPC result."""

import sys

from aiohttp import web

from livedm.server.main import new_event_loop

REPLY = {"jsonrpc": "2.0", "result": 123456789, "id": 1}


async def handler(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response(REPLY)


def main() -> None:
    app = web.Application()
    app.router.add_post("/api", handler)
    # the same event loop livedmd runs on, so the ratio is livedm's own overhead
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=new_event_loop())


if __name__ == "__main__":
    main()
