"""The `rlvr` command: the main job, single services, and schedule inspection."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from services.core.config import ConfigError, RunConfig, load_run_config
from services.core.lifecycle import Terminated, sigterm_as_interrupt
from services.core.result_stream import results_on_stdout, say
from services.run.evaluate import add_eval_parser

DEFAULT_PRESET = "deploy/presets/tiny-cpu.toml"
EXIT_BAD_CONFIG, EXIT_CONFLICT, EXIT_BROKEN_PIPE, EXIT_SIGINT, EXIT_SIGTERM = 2, 3, 141, 130, 143

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
    run.add_argument(
        "--controller-url", default=None, help="use this controller (with --reward-url and a Redis URL) instead of one"
        " started here: the entry point inside a Kubernetes job",
    )  # fmt: skip
    run.add_argument("--reward-url", default=None, help="use this reward server (with --controller-url)")
    run.add_argument(
        "--ray-address", default=None, help="run the actors on this Ray cluster (sets ray.enabled and ray.address)"
    )
    run.add_argument(
        "--force-schedule", action="store_true", help="resume an existing run with a changed schedule (recorded)"
    )
    run.add_argument(
        "--dry-run", action="store_true", help="check the config and its inputs, print the resolved config, exit"
    )
    run.set_defaults(func=_cmd_run)
    prep = sub.add_parser("prepare", help="build the tiny world: task splits, tokenizer, warm-started policy (cached)")
    _add_config_args(prep)
    prep.add_argument("--out", type=Path, default=None, help="world folder (default runs/worlds/world-<key>)")
    prep.add_argument("--seed", type=int, default=None, help="the world's seed (same as --set world.seed=N)")
    prep.set_defaults(func=_cmd_prepare)
    add_eval_parser(sub)  # `rlvr eval`: services/run/evaluate.py owns its flags and handler
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
    for step in sorted(s for s in keep if 1 <= s <= sched.total_steps):
        phase = sched.phase(step)
        lines.append(f"{phase.step:>6} {phase.progress:>9.4f} {phase.ratio:>8.4f}  {phase.stage}")
    return "\n".join(lines)


def _cmd_schedule(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.json:
        state = config.build_schedule().state().model_dump(mode="json")
        state["curve"] = [p.model_dump(mode="json") for p in config.build_schedule().curve()]
        say(json.dumps(state))
    else:
        say(format_schedule_table(config))
    if args.plot is not None:
        from services.plot import plot_schedule

        say(f"plot: {plot_schedule(config.build_schedule(), args.plot, title=config.run_id)}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *([f"world.seed={args.seed}"] if args.seed is not None else [])]
    config = load_run_config(args.config, overrides)
    from services.run.world import prepare_for_cli

    summary = prepare_for_cli(config, args.out)
    say(json.dumps(summary))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.ray_address is not None:
        args.overrides = [*args.overrides, "ray.enabled=true", f"ray.address={json.dumps(args.ray_address)}"]
    config = _load(args)
    from services.run.main_job import RunConflictError, run_main_job
    from services.run.preflight import preflight

    if args.dry_run:
        preflight(config)
        say(config.model_dump_json(indent=2))
        return 0
    try:
        with sigterm_as_interrupt():
            redis_url = args.redis_url or os.environ.get("REDIS_URL")
            return run_main_job(
                config, out_dir=args.out, redis_url=redis_url, force_schedule=args.force_schedule,
                controller_url=args.controller_url, reward_url=args.reward_url,
            )  # fmt: skip
    except RunConflictError as exc:
        print(f"rlvr run: error: {exc}", file=sys.stderr)
        return EXIT_CONFLICT


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in FORWARDED:
        module = importlib.import_module(FORWARDED[args_list[0]][0])
        forward: Callable[[Sequence[str]], int] = module.main
        return forward(args_list[1:])
    args = build_parser().parse_args(args_list)
    try:
        with results_on_stdout():  # a reader that already left breaks the pipe on the way out, inside the handler below
            result: int = args.func(args)
    except ConfigError as exc:  # configuration errors: say what is wrong, no traceback
        print(f"rlvr {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: children were stopped on the way out
        terminated = isinstance(exc, Terminated)
        print(f"rlvr {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_SIGTERM if terminated else EXIT_SIGINT
    except BrokenPipeError:  # `rlvr schedule | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return result


if __name__ == "__main__":
    raise SystemExit(main())
