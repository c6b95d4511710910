"""Write ``openapi.yaml`` from the code: ``python -m scripts.gen_openapi`` (``make openapi``).

The app is built with the test configuration (nothing is connected); the document comes from
``api.openapi.openapi_yaml``, the same function that serves ``GET /openapi.yaml``.
``--check`` exits 1 when the committed file differs, without writing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "openapi.yaml"


def generate() -> str:
    """The OpenAPI document the code describes, as YAML."""
    from api import create_app
    from api.openapi import openapi_yaml

    # A placeholder secret: nothing is signed; the spec never depends on configuration values.
    app = create_app({"TESTING": True, "JWT_SECRET_KEY": "openapi-generator-" + "x" * 32})
    return openapi_yaml(app)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with openapi.yaml")
    parser.add_argument("--output", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    text = generate()
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current != text:
            print(f"{args.output} is out of date: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(f"{args.output} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
