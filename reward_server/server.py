"""`rlvr reward-server` / `python -m reward_server`: parse the flags, build the app, run it under uvicorn."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError

from reward_server.app import create_app
from reward_server.settings import RewardSettings
from services.core.config import format_validation_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlvr reward-server",
        description="Verifiable-reward HTTP service. Flags override RLVR_REWARD_* environment variables.",
    )
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1; env RLVR_REWARD_HOST)")
    parser.add_argument("--port", type=int, help="TCP port (default 8200; env RLVR_REWARD_PORT)")
    parser.add_argument("--workers", type=int, help="scorer worker processes (default 2; env RLVR_REWARD_WORKERS)")
    parser.add_argument(
        "--timeout-s", type=float, dest="item_timeout_s", help="hard per-item scoring limit in seconds (default 5)"
    )
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def settings_from_args(argv: Sequence[str] | None) -> RewardSettings:
    """Environment-backed settings with the given flags on top (flags left out keep the env / default value)."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return RewardSettings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until interrupted; 2 on invalid settings (with the reason on stderr)."""
    try:
        settings = settings_from_args(argv)
    except ValidationError as exc:
        print(f"rlvr reward-server: error: invalid settings: {format_validation_error(exc)}", file=sys.stderr)
        return 2
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return 0
