"""A benchmark server process: our app, or the bare FastAPI floor, under one uvicorn config.

``python -m bench.serve service --port P --registry R [--response-cache-bytes N]``
``python -m bench.serve floor --port P --payload FILE --path /v1/models/airline/predict``
``python -m bench.serve floor --port P --payload FILE --answers FILE --path /v1/models/panel/predict``
(``--answers``: JSON lines ``[body, answer]``; the floor returns each body's own answer)
``--log``: the service logs as `forecast-service serve` does (JSON lines at info, access log on)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from starlette.requests import Request  # at module level: FastAPI resolves the floor's annotation here

# the one uvicorn config both servers run with: one worker, uvloop + httptools (uvicorn[standard])
UVICORN_CONFIG: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "workers": 1,
    "access_log": False,
    "log_level": "warning",
}


def floor_app(payload: bytes, path: str, answers: dict[bytes, bytes] | None = None) -> Any:
    """A bare FastAPI app: POST ``path`` returns ``payload`` as JSON (with ``answers``: the
    answer of the body it was sent, ``payload`` for others), GET /readyz says ready."""
    from fastapi import FastAPI
    from starlette.responses import Response

    app = FastAPI()

    if answers is None:

        @app.post(path)
        async def predict() -> Response:
            return Response(payload, media_type="application/json")

    else:

        @app.post(path)
        async def predict_body(request: Request) -> Response:
            return Response(answers.get(await request.body(), payload), media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return app


def read_answers(path: Path) -> dict[bytes, bytes]:
    """``[body, answer]`` JSON lines as a table of bytes."""
    import json

    pairs = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {body.encode(): answer.encode() for body, answer in pairs}


def service_app(registry: Path, response_cache_bytes: int | None, log: bool = False) -> Any:
    """Our app on ``registry``, settings otherwise at their defaults."""
    from service.app import create_app
    from service.settings import Settings

    if log:
        from service.observability import configure_logging

        configure_logging("info", json_lines=True)
    # data (job store, datasets) beside the registry, in the bench's temporary folder
    overrides: dict[str, Any] = {"registry": registry, "data_dir": registry.parent / f"{registry.name}-data"}
    if response_cache_bytes is not None:
        overrides["response_cache_bytes"] = response_cache_bytes
    return create_app(Settings(**overrides))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Which app, on which port, with which data."""
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("app", choices=["service", "floor"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--response-cache-bytes", type=int)
    parser.add_argument("--payload", type=Path)
    parser.add_argument("--path", default="/v1/models/airline/predict")
    parser.add_argument("--answers", type=Path, help="floor: JSON lines [body, answer]")
    parser.add_argument("--log", action="store_true", help="service: JSON log lines at info, access log on")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until terminated."""
    import uvicorn

    args = parse_args(argv)
    if args.app == "floor":
        answers = read_answers(args.answers) if args.answers else None
        app = floor_app(args.payload.read_bytes(), args.path, answers)
    else:
        app = service_app(args.registry, args.response_cache_bytes, log=args.log)
    uvicorn.run(app, host="127.0.0.1", port=args.port, **UVICORN_CONFIG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
