"""`rlvr controller`: serve the controller API with uvicorn.

Precedence: settings defaults < `RLVR_CONTROLLER_*` / `REDIS_URL` environment < command-line flags.
Exit codes: 0 clean shutdown, 2 bad arguments or run config, 3 startup refused (e.g. schedule conflict, no Redis).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from services.controller.app import create_app, load_served_run_config, open_run_state
from services.controller.errors import ControllerError
from services.controller.settings import ControllerSettings
from services.core.config import format_validation_error
from services.core.redis_conn import RedisUnavailableError

EXIT_BAD_CONFIG = 2
EXIT_REFUSED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvr controller", description="Serve the schedule controller API.")
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1; env RLVR_CONTROLLER_HOST)")
    parser.add_argument("--port", type=int, help="TCP port (default 8100; env RLVR_CONTROLLER_PORT)")
    parser.add_argument(
        "--redis-url",
        help="Redis URL; prefer env REDIS_URL when it holds a password (argv is public); omitted: embedded",
    )
    parser.add_argument("--embedded-redis-dir", type=Path, help="keep the embedded Redis data here across restarts")
    parser.add_argument("--config", type=Path, help="run config (TOML preset or a run's resolved config.json)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="run config override"
    )
    parser.add_argument(
        "--force-schedule",
        action="store_true",
        default=None,
        help="overwrite the run's stored schedule if it differs (recorded in the run state)",
    )
    parser.add_argument(
        "--token-env", metavar="NAME", help="environment variable holding the bearer token for mutating endpoints"
    )
    parser.add_argument("--log-level", help="uvicorn log level (default info)")
    return parser


def settings_from_args(args: argparse.Namespace) -> ControllerSettings:
    """Environment-backed settings with every flag that was given applied on top."""
    given: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "redis_url": args.redis_url,
        "embedded_redis_dir": args.embedded_redis_dir,
        "run_config_path": args.config,
        "force_schedule": args.force_schedule,
        "log_level": args.log_level,
    }
    if args.overrides:
        given["run_config_overrides"] = args.overrides
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ValueError(f"--token-env {args.token_env}: that environment variable is unset or empty")
        given["token"] = token
    return ControllerSettings(**{key: value for key, value in given.items() if value is not None})


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, open the run state, serve until stopped (SIGINT/SIGTERM shut down gracefully).

    A refused start (schedule or settings conflict, Redis unreachable) is one line on stderr and exit 3.
    """
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        run_config = load_served_run_config(settings)
    except ValidationError as exc:
        print(f"rlvr controller: error: {format_validation_error(exc)}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except ValueError as exc:
        print(f"rlvr controller: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        with open_run_state(settings, run_config) as opened:
            app = create_app(settings, run_config=run_config, opened=opened)
            uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    except (ControllerError, RedisUnavailableError) as exc:
        print(f"rlvr controller: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except SystemExit as exc:  # uvicorn exits with 3 when the lifespan startup fails
        return exc.code if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
