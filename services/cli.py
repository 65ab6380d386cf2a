"""The `rlvr` command: the main job, single services, and schedule inspection."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from services.core.config import RunConfig, load_run_config

DEFAULT_PRESET = "deploy/presets/tiny-cpu.toml"

# Services parse their own flags; `rlvr NAME ...` forwards the rest of the line to `module.main(argv)`.
FORWARDED: dict[str, tuple[str, str]] = {
    "controller": ("services.controller.server", "the schedule controller (FastAPI)"),
    "reward-server": ("reward_server.server", "the verifiable-reward server (FastAPI)"),
}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_PRESET, help=f"run config TOML (default {DEFAULT_PRESET})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set schedule.max_ratio=0.5 (repeatable)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="the main job: the pipeline on the embedded default (local, embedded Redis, CPU)")
    _add_config_args(run)
    run.add_argument("--out", type=Path, default=None, help="output folder (default runs/<run_id>)")
    run.add_argument("--redis-url", default=None, help="use this Redis instead of an embedded one (or REDIS_URL)")
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    run.set_defaults(func=_cmd_run)
    sched = sub.add_parser("schedule", help="print (and plot) the resolved schedule of a run config")
    _add_config_args(sched)
    sched.add_argument("--json", action="store_true", help="print the whole curve as JSON")
    sched.add_argument("--plot", type=Path, default=None, help="write a PNG of r(s) here")
    sched.set_defaults(func=_cmd_schedule)
    for name, (_, summary) in FORWARDED.items():
        sub.add_parser(name, help=f"{summary}; `rlvr {name} --help` for its flags", add_help=False)
    return parser


def _load(args: argparse.Namespace) -> RunConfig:
    return load_run_config(args.config, args.overrides)


def format_schedule_table(config: RunConfig, every: int | None = None) -> str:
    """A human-readable table of the phases (every `every` steps, plus the boundaries)."""
    sched = config.build_schedule()
    step_every = every or max(1, sched.total_steps // 20)
    boundaries = {1, sched.total_steps, sched.min_step, sched.max_step}
    keep = boundaries | set(range(step_every, sched.total_steps, step_every))
    lines = [
        f"run {config.run_id}: strategy={config.credit.strategy} mode={config.schedule.mode} "
        f"m0={config.schedule.initial_magnitude} T={sched.total_steps} min_step={sched.min_step} "
        f"max_step={sched.max_step}",
        f"{'step':>6} {'progress':>9} {'ratio':>8}  stage",
    ]
    for phase in sched.curve():
        if phase.step in keep:
            lines.append(f"{phase.step:>6} {phase.progress:>9.4f} {phase.ratio:>8.4f}  {phase.stage}")
    return "\n".join(lines)


def _cmd_schedule(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.json:
        state = config.build_schedule().state().model_dump(mode="json")
        state["curve"] = [p.model_dump(mode="json") for p in config.build_schedule().curve()]
        print(json.dumps(state))
    else:
        print(format_schedule_table(config))
    if args.plot is not None:
        from services.plot import plot_schedule

        print(f"plot: {plot_schedule(config.build_schedule(), args.plot, title=config.run_id)}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.dry_run:
        print(config.model_dump_json(indent=2))
        return 0
    from services.stack import run_main_job

    code: int = run_main_job(
        config, config_path=args.config, overrides=args.overrides, out_dir=args.out, redis_url=args.redis_url
    )
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in FORWARDED:
        module = importlib.import_module(FORWARDED[args_list[0]][0])
        forward: Callable[[Sequence[str]], int] = module.main
        return forward(args_list[1:])
    args = build_parser().parse_args(args_list)
    try:
        result: int = args.func(args)
    except ValueError as exc:  # configuration errors: say what is wrong, no traceback
        print(f"rlvr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    raise SystemExit(main())
