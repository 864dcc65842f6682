"""``python -m service [--host H] [--port P]``: serve with uvicorn (see :func:`serve`)."""

from __future__ import annotations

import argparse

from service.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", default=None, help="bind address (default SHARPCXR_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default SHARPCXR_PORT)")
    args = parser.parse_args(argv)
    raise SystemExit(serve(host=args.host, port=args.port))


if __name__ == "__main__":
    main()
