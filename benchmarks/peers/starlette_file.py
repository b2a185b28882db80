"""Peer: Starlette's FileResponse (through StaticFiles) under uvicorn, serving one directory.

  starlette_file.py ROOT PORT

StaticFiles answers with FileResponse, which honours single and multiple byte ranges.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles


def main() -> None:
    root, port = sys.argv[1], int(sys.argv[2])
    app = Starlette(routes=[Mount("/", app=StaticFiles(directory=root))])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
