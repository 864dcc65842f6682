"""Write the app's OpenAPI document: ``python -m service.openapi [PATH]`` (``make openapi``).

The committed ``openapi/openapi.json`` is what PACS integrators read; a test regenerates it
and fails when the app and the file disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from service.app import create_app
from service.settings import Settings

DEFAULT_PATH = Path("openapi/openapi.json")


def openapi_document() -> dict[str, Any]:
    """The schema of an app built with default settings (nothing is loaded or started)."""
    schema: dict[str, Any] = create_app(Settings()).openapi()
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(openapi_document()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
