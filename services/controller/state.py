"""The run state the controller owns, kept in Redis so a controller can restart or move without changing anything.

Keys (DESIGN.md §3), all namespaced by run:
- `rlvr:{run_id}:state` (hash): `schedule` (ScheduleState JSON: config + total_steps + resolved min/max step, fixed at
  run creation), `created_at`, `last_step` (0 before any report), `policy_version`, `last_report_at`, `paused`,
  `paused_at`, `pause_reason`, and, when a schedule was overwritten by force, `schedule_force_count`,
  `schedule_forced_at`, `schedule_previous` (the JSON it replaced), and `config` / `config_fingerprint`.
- `rlvr:{run_id}:steps` (hash step -> StoredStep JSON): every accepted report; bounded by total_steps because a step
  beyond the run is refused.
- `rlvr:{run_id}:step_digests` (hash step -> sha256 of the report without `created_at`): the idempotency check.

Semantics:
- Run creation (`create_or_load`): absent -> the configured schedule is stored atomically (WATCH/MULTI); present and
  equal -> reused (the stored one is authoritative); different or unreadable -> `ScheduleConflictError` naming both,
  unless `force=True`, which overwrites it and records the fact (count, time, previous JSON). Forcing keeps the
  step history; reports stored before keep the phases they were trained with.
- The current step is the step the trainer is about to take: last reported step + 1 (1 before any report).
- `phase(step)` is defined for every step >= 1, also past total_steps (the schedule's value there: r = 0, stage
  `general`, for decaying modes), so a rollout worker that runs ahead of the last step still gets an answer.
- `report_step` is one Lua script (atomic, so concurrent reports stay consistent). Checks, in order: run id (404),
  step <= total_steps, reported phase == schedule phase (step and stage exact, ratio/progress within 1e-9: the
  trainer should echo the controller's phase), then in Redis: a step seen before is a duplicate (identical content
  apart from `created_at` -> the first acceptance is returned again, nothing changes) or a conflict; a new step must
  be exactly last + 1; the policy version must not go below the last one. All refusals are 409 with the reason.
- While the run is paused a new step report is refused (409 `run_paused`; a repeat of an accepted report is still
  answered as a duplicate): the run loop and rollout workers stop at their next step boundary, and a trainer that
  finished a step holds its report until resume.
- The resolved run config (everything but operational settings, `RunConfig.fingerprinted`) and its fingerprint are
  stored with the run (`config`, `config_fingerprint`); a controller configured with other settings refuses to
  start (`ConfigConflictError`), and `--force-schedule` overrides only the schedule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, TypeVar, cast

import redis
from pydantic import ValidationError
from redis.typing import EncodableT, FieldT

from services.controller.errors import (
    ConfigConflictError,
    DuplicateStepMismatchError,
    PhaseMismatchError,
    PolicyVersionRegressionError,
    RunNotFoundError,
    RunPausedError,
    RunStateMissingError,
    ScheduleChangedError,
    ScheduleConflictError,
    StepBeyondRunError,
    StepNotReportedError,
    StepOutOfOrderError,
)
from services.controller.schemas import RunStatus, StoredStep
from services.core.config import RunConfig, canonical_json, config_differences
from services.core.keys import STATE_HASH, STEP_DIGESTS_HASH, STEPS_HASH, controller_keys, run_key
from services.core.queues import PROMPTS, ROLLOUTS, QueueStats
from services.core.redis_streams import stream_stats
from services.core.schedule import Phase, Schedule, ScheduleState
from services.core.wire import StepReport

log = logging.getLogger(__name__)

PHASE_TOLERANCE = 1e-9  # ratio/progress may differ by float round-trips through other JSON stacks, no more
WATCH_RETRIES = 20
CONFIG_FIELD = "config"
FINGERPRINT_FIELD = "config_fingerprint"
SCHEDULE_KEYS = ("schedule.", "total_steps:")  # what --force-schedule may change (config_differences lines)

T = TypeVar("T")

# KEYS: state, steps, digests. ARGV: step, policy_version, schedule_raw, digest, stored_json, now.
_REPORT_STEP_LUA = """
local step = tonumber(ARGV[1])
local version = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('HGET', KEYS[1], 'schedule') ~= ARGV[3] then return {'schedule_changed'} end
local seen = redis.call('HGET', KEYS[3], ARGV[1])
if seen then
  local stored = redis.call('HGET', KEYS[2], ARGV[1])
  if seen == ARGV[4] then return {'duplicate', stored} end
  return {'mismatch', stored}
end
if redis.call('HGET', KEYS[1], 'paused') == '1' then return {'paused'} end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_step'))
if step ~= last + 1 then return {'out_of_order', tostring(last)} end
local current = tonumber(redis.call('HGET', KEYS[1], 'policy_version'))
if version < current then return {'regression', tostring(current)} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[1], 'last_step', ARGV[1], 'policy_version', ARGV[2], 'last_report_at', ARGV[6])
return {'accepted', ARGV[5]}
"""

# KEYS: state. ARGV: '1' pause / '0' resume, now, reason ('' for none). Returns the hash (flat) or 0 if missing.
_SET_PAUSED_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' then
  if redis.call('HGET', KEYS[1], 'paused') ~= '1' then
    redis.call('HSET', KEYS[1], 'paused', '1', 'paused_at', ARGV[2])
    if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'pause_reason', ARGV[3]) end
  end
else
  redis.call('HSET', KEYS[1], 'paused', '0')
  redis.call('HDEL', KEYS[1], 'paused_at', 'pause_reason')
end
return redis.call('HGETALL', KEYS[1])
"""


def state_key(run_id: str) -> str:
    return run_key(run_id, STATE_HASH)


def steps_key(run_id: str) -> str:
    return run_key(run_id, STEPS_HASH)


def step_digests_key(run_id: str) -> str:
    return run_key(run_id, STEP_DIGESTS_HASH)


def run_keys(run_id: str) -> list[str]:
    """Every key the controller writes for a run (for cleanup in tests and tooling)."""
    return controller_keys(run_id)


def _reply(value: Awaitable[T] | T) -> T:
    """redis-py types replies as `T | Awaitable[T]`; the sync client used here always returns `T`."""
    return cast(T, value)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def report_digest(report: StepReport) -> str:
    """Identity of a report for idempotency: everything but `created_at` (a retry may rebuild the object)."""
    payload = report.model_dump(mode="json", exclude={"created_at"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def phases_match(reported: Phase, expected: Phase, tolerance: float = PHASE_TOLERANCE) -> bool:
    """Same step and stage; ratio and progress equal up to `tolerance`."""
    return (
        reported.step == expected.step
        and reported.stage == expected.stage
        and abs(reported.ratio - expected.ratio) <= tolerance
        and abs(reported.progress - expected.progress) <= tolerance
    )


def describe_difference(stored: ScheduleState, configured: ScheduleState) -> str:
    """`field: stored -> configured` for each differing field of two schedule states."""
    left, right = _flatten(stored.model_dump()), _flatten(configured.model_dump())
    diffs = [
        f"{key}: {left.get(key)!r} -> {right.get(key)!r}"
        for key in sorted(left | right)
        if left.get(key) != right.get(key)
    ]
    return ", ".join(diffs)


def _flatten(data: dict[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class RunInit:
    """What `create_or_load` did; `previous` is the replaced schedule JSON when forced."""

    outcome: Literal["created", "reused", "forced"]
    previous: str | None = None


@dataclass(frozen=True)
class StepOutcome:
    """An accepted report as stored; `duplicate` when it had been accepted before."""

    stored: StoredStep
    duplicate: bool


class RunStateStore:
    """The run's state in Redis: creation, phases, step reports, pause. Thread-safe (Redis does the locking)."""

    def __init__(
        self, client: redis.Redis, run_id: str, schedule: Schedule, *, config: RunConfig | None = None
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.schedule = schedule  # replaced by the stored schedule in create_or_load
        self.config = config  # its fingerprint is stored with the run; None: only the schedule is checked
        self._schedule_raw: str | None = None
        self._report_script = client.register_script(_REPORT_STEP_LUA)
        self._pause_script = client.register_script(_SET_PAUSED_LUA)

    @property
    def state_key(self) -> str:
        return state_key(self.run_id)

    def create_or_load(self, *, force: bool = False, now: float | None = None) -> RunInit:
        """Store the configured schedule if the run is new, else check the stored one (see the module docstring)."""
        now = time.time() if now is None else now
        with self._client.pipeline() as pipe:
            for _ in range(WATCH_RETRIES):
                try:
                    return self._create_or_load_once(pipe, force=force, now=now)
                except redis.WatchError:
                    continue
        raise RuntimeError(f"run state {self.state_key} kept changing during {WATCH_RETRIES} creation attempts")

    def _create_or_load_once(self, pipe: redis.client.Pipeline, *, force: bool, now: float) -> RunInit:
        key = self.state_key
        pipe.watch(key)  # type: ignore[no-untyped-call]
        stored_raw = _text(_reply(pipe.hget(key, "schedule")))
        configured = self.schedule.state()
        stored_config = _text(_reply(pipe.hget(key, CONFIG_FIELD)))
        if stored_raw is None:
            self._write_schedule(pipe, configured, now=now)
            return RunInit("created")
        stored, problem = self._parse_stored(stored_raw, configured)
        if stored is not None and stored == configured:
            self._check_config(stored_config, ignore=())
            if stored_config is None and self.config is not None:
                self._write_config(pipe)  # a run created without a config record adopts this one
            else:
                pipe.unwatch()
            self._adopt(stored_raw, stored)
            return RunInit("reused")
        # Only the schedule may be forced; every other difference is refused either way.
        self._check_config(stored_config, ignore=SCHEDULE_KEYS)
        if not force:
            raise ScheduleConflictError(
                f"run {self.run_id!r} already exists in Redis ({key}) with a different schedule ({problem}). "
                f"stored: {stored_raw}; configured: {configured.model_dump_json()}. The schedule is fixed at run "
                "creation so a resumed run cannot silently shift its curve: use a new run_id, restore the original "
                "schedule config, or restart with --force-schedule to overwrite it (the overwrite is recorded).",
                stored=stored_raw,
                configured=configured.model_dump_json(),
            )
        self._write_schedule(pipe, configured, now=now, replaced=stored_raw)
        log.warning("run %s: stored schedule overwritten by force (%s); previous: %s", self.run_id, problem, stored_raw)
        return RunInit("forced", previous=stored_raw)

    def _write_schedule(
        self, pipe: redis.client.Pipeline, configured: ScheduleState, *, now: float, replaced: str | None = None
    ) -> None:
        """In one MULTI: the schedule, the initial counters where absent, and the record of a forced overwrite."""
        key, raw = self.state_key, configured.model_dump_json()
        pipe.multi()
        pipe.hset(key, "schedule", raw)
        if self.config is not None:
            pipe.hset(key, mapping=self._config_fields())
        initial = {"created_at": repr(now), "last_step": "0", "policy_version": "0", "paused": "0"}
        for field, value in initial.items():
            pipe.hsetnx(key, field, value)  # a forced overwrite keeps the run's history
        if replaced is not None:
            forced: dict[FieldT, EncodableT] = {"schedule_forced_at": repr(now), "schedule_previous": replaced}
            pipe.hset(key, mapping=forced)
            pipe.hincrby(key, "schedule_force_count", 1)
        pipe.execute()
        self._adopt(raw, configured)

    def _config_fields(self) -> dict[FieldT, EncodableT]:
        assert self.config is not None
        return {CONFIG_FIELD: canonical_json(self.config.fingerprinted()), FINGERPRINT_FIELD: self.config.fingerprint()}

    def _write_config(self, pipe: redis.client.Pipeline) -> None:
        pipe.multi()
        pipe.hset(self.state_key, mapping=self._config_fields())
        pipe.execute()

    def _check_config(self, stored_config: str | None, *, ignore: tuple[str, ...]) -> None:
        """Refuse a configured run whose settings differ from the stored run's (keys under `ignore` excepted)."""
        if self.config is None or stored_config is None:
            return
        try:
            stored = json.loads(stored_config)
        except json.JSONDecodeError:
            stored = {"(unreadable)": stored_config}
        differences = [
            line for line in config_differences(stored, self.config.fingerprinted()) if not line.startswith(ignore)
        ]
        if differences:
            raise ConfigConflictError(
                f"run {self.run_id!r} already exists in Redis ({self.state_key}) with other settings: "
                f"{'; '.join(differences)}. A run's settings are fixed at creation so a resume trains the same "
                "experiment: use a new run_id, or restore the stored settings.",
                differences=differences,
            )

    @staticmethod
    def _parse_stored(raw: str, configured: ScheduleState) -> tuple[ScheduleState | None, str]:
        """The stored state and a description of how it differs from `configured` (or why it is unreadable)."""
        try:
            stored = ScheduleState.model_validate_json(raw)
            Schedule.from_state(stored)
        except (ValidationError, ValueError) as exc:
            return None, f"the stored schedule is unreadable: {exc}"
        return stored, describe_difference(stored, configured)

    def _adopt(self, raw: str, state: ScheduleState) -> None:
        self._schedule_raw = raw
        self.schedule = Schedule.from_state(state)

    def phase(self, step: int) -> Phase:
        """The schedule's phase at any step >= 1 (ValueError otherwise)."""
        return self.schedule.phase(step)

    def status(self) -> RunStatus:
        """The run's live status; RunStateMissingError when the state hash is gone."""
        raw = _reply(self._client.hgetall(self.state_key))
        return self._parse_status({_text(k) or "": _text(v) or "" for k, v in raw.items()})

    def _parse_status(self, fields: dict[str, str]) -> RunStatus:
        if not fields:
            raise self._missing_error()
        paused_at = fields.get("paused_at")
        last_report_at = fields.get("last_report_at")
        return RunStatus(
            run_id=self.run_id,
            last_reported_step=int(fields["last_step"]),
            policy_version=int(fields["policy_version"]),
            paused=fields.get("paused") == "1",
            paused_at=float(paused_at) if paused_at else None,
            pause_reason=fields.get("pause_reason") or None,
            last_report_at=float(last_report_at) if last_report_at else None,
            created_at=float(fields["created_at"]),
            schedule_force_count=int(fields.get("schedule_force_count", "0")),
            total_steps=self.schedule.total_steps,
        )

    def report_step(self, report: StepReport, *, now: float | None = None) -> StepOutcome:
        """Record one finished step atomically (checks and their errors: see the module docstring)."""
        self._check_report(report)
        assert self._schedule_raw is not None, "create_or_load() must run before report_step()"
        stored = StoredStep(report=report, accepted_at=time.time() if now is None else now)
        keys = [self.state_key, steps_key(self.run_id), step_digests_key(self.run_id)]
        args: list[EncodableT] = [report.step, report.policy_version, self._schedule_raw, report_digest(report)]
        args += [stored.model_dump_json(), repr(stored.accepted_at)]
        reply = _reply(self._report_script(keys=keys, args=args))
        outcome, payload = _text(reply[0]), _text(reply[1]) if len(reply) > 1 else None
        if outcome in ("accepted", "duplicate"):
            assert payload is not None
            return StepOutcome(StoredStep.model_validate_json(payload), duplicate=outcome == "duplicate")
        raise self._refusal(report, outcome or "", payload)

    def _check_report(self, report: StepReport) -> None:
        if report.run_id != self.run_id:
            raise RunNotFoundError(
                f"run {report.run_id!r} is not served here: this controller serves run {self.run_id!r}",
                served_run_id=self.run_id,
            )
        total = self.schedule.total_steps
        if report.step > total:
            raise StepBeyondRunError(
                f"step {report.step} is beyond the end of run {self.run_id!r} (total_steps={total})",
                total_steps=total,
            )
        expected = self.phase(report.step)
        if not phases_match(report.phase, expected):
            raise PhaseMismatchError(
                f"step {report.step} was trained with phase {report.phase.model_dump()} but the schedule's phase for "
                f"that step is {expected.model_dump()}: the trainer applied the wrong phase; fetch it from "
                "GET /v1/phase?step=N and retrain the step",
                expected_phase=expected.model_dump(),
            )

    def _refusal(self, report: StepReport, outcome: str, payload: str | None) -> Exception:
        step = report.step
        if outcome == "missing":
            return self._missing_error()
        if outcome == "schedule_changed":
            return ScheduleChangedError(
                f"the schedule of run {self.run_id!r} in Redis was replaced (forced) after this controller started; "
                "restart this controller so it serves the stored schedule"
            )
        if outcome == "mismatch":
            return DuplicateStepMismatchError(
                f"step {step} was already reported with different content (policy_version, phase or metrics); "
                "a step is recorded once: report the next step instead",
                stored=json.loads(payload or "null"),
            )
        if outcome == "out_of_order":
            expected = int(payload or "0") + 1
            return StepOutOfOrderError(
                f"step {step} is out of order: steps are reported contiguously and the expected next step is "
                f"{expected}",
                expected_step=expected,
            )
        if outcome == "paused":
            return RunPausedError(
                f"run {self.run_id!r} is paused: step {step} is not recorded while paused; hold the report and send it "
                "again after POST /v1/resume"
            )
        if outcome == "regression":
            return PolicyVersionRegressionError(
                f"policy_version {report.policy_version} at step {step} is lower than the last reported "
                f"policy_version {payload}: policy versions never go backwards",
                last_policy_version=int(payload or "0"),
            )
        return RuntimeError(f"unexpected report_step outcome {outcome!r}")

    def _missing_error(self) -> RunStateMissingError:
        return RunStateMissingError(
            f"the state of run {self.run_id!r} ({self.state_key}) is missing from Redis (was Redis restarted "
            "without persistence, or the key deleted?); restart the controller to recreate it, then resume the "
            "trainer from a checkpoint"
        )

    def get_step(self, step: int) -> StoredStep:
        """The accepted report of `step`; StepNotReportedError when there is none."""
        raw = _text(_reply(self._client.hget(steps_key(self.run_id), str(step))))
        if raw is None:
            raise StepNotReportedError(f"step {step} of run {self.run_id!r} has not been reported", step=step)
        return StoredStep.model_validate_json(raw)

    def set_paused(self, paused: bool, *, reason: str | None = None, now: float | None = None) -> RunStatus:
        """Pause or resume (idempotent: pausing twice keeps the first pause time and reason)."""
        now = time.time() if now is None else now
        reply = _reply(
            self._pause_script(keys=[self.state_key], args=["1" if paused else "0", repr(now), reason or ""])
        )
        if not reply:
            raise self._missing_error()
        flat = [_text(item) or "" for item in reply]
        return self._parse_status(dict(zip(flat[::2], flat[1::2], strict=True)))

    def queue_stats(self) -> dict[str, QueueStats]:
        """Read-only backlog of the run's streams (for /metrics); creates nothing."""
        return {spec.name: stream_stats(self._client, self.run_id, spec) for spec in (PROMPTS, ROLLOUTS)}
