"""The baseline: a bare aiohttp handler that reads the body and answers pre-encoded constant JSON-RPC bytes,
access log off. `python -m bench.bare_server PORT`."""

import sys

from aiohttp import web

from livedm.server.main import new_event_loop

RESULT = 123456789
REPLY = b'{"jsonrpc": "2.0", "result": %d, "id": 1}' % RESULT


async def handler(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=REPLY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/api", handler)
    # the same event loop livedmd runs on, so the ratio is livedm's own overhead
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=new_event_loop())


if __name__ == "__main__":
    main()
