"""Peer: aiohttp's web.FileResponse (through a static route), serving one directory.

  aiohttp_file.py ROOT PORT

The static route answers with web.FileResponse, which honours byte ranges and uses sendfile.
"""

from __future__ import annotations

import sys

from aiohttp import web


def main() -> None:
    root, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    app.router.add_static("/", root)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
