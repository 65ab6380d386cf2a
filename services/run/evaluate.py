"""`rlvr eval`: sample k answers per prompt from a causal LM, grade them through the reward server, report metrics.

`prepare_eval` checks every input before any work: the flags, every row of the data file, the model directory (a
`config.json` of a causal-LM type, weights, a tokenizer with an EOS token), the folder of `--out` and a given reward
server's /readyz. A bad input is a one-line `ConfigError` (exit 2) before the model loads or a server starts.
`run_eval` then reads like the job: a reward server (the given URL, or one started for the command) → load the model
(float32, CPU) → generate (trainer/generation.py) → grade (`grade_responses`) → summarize
(trainer/evaluation/metrics.py) → the JSON report, printed to stdout and written to `--out` when given. Progress goes
to stderr, so stdout is the report alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from reward_server.client import RewardClient, RewardServiceError, ScoreRequestItem, ScoreResult
from services.core.config import ConfigError, RewardConfig
from services.core.lifecycle import sigterm_as_interrupt
from services.core.result_stream import say
from services.process import ServiceExitedError, run_service
from trainer.evaluation.data import DataKeys, EvalDataError, EvalRow, load_eval_rows
from trainer.evaluation.metrics import EvalMetrics, PromptOutcome, SampleOutcome, summarize

if TYPE_CHECKING:  # torch and transformers load only once the cheap checks have passed
    from transformers import PreTrainedTokenizerBase

    from trainer.generation import Completion, SamplingSettings

EXIT_FAILED = 1
GRADE_BATCH_ITEMS = 256  # well under the reward server's max_items (1024 by default)
READY_PROBE_TIMEOUT_S = 5.0
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class EvalJob:
    """Everything `rlvr eval` needs, checked: the rows to evaluate, how to sample, where to grade and report."""

    model_dir: Path
    data_file: Path
    keys: DataKeys
    limit: int | None
    rows: tuple[EvalRow, ...]
    settings: SamplingSettings
    tokenizer: PreTrainedTokenizerBase
    reward_url: str | None
    out: Path | None


def add_eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `rlvr eval` on the `rlvr` command's subparsers."""
    p = sub.add_parser("eval", help="sample k answers per prompt, grade them with the reward server, report pass@k")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="a Hugging Face causal-LM directory")
    p.add_argument(
        "--data", type=Path, required=True, metavar="FILE.jsonl", help="a jsonl prompt set (one JSON object per line)"
    )
    p.add_argument("--k", type=int, default=1, help="answers sampled per prompt (default 1)")
    p.add_argument(
        "--temperature", type=float, default=1.0, metavar="T", help="sampling temperature; 0 = greedy (default 1.0)"
    )
    p.add_argument(
        "--top-p", type=float, default=1.0, metavar="P", help="nucleus top-p in (0, 1] (default 1.0; top-k is off)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=1024, metavar="N", help="token limit per answer (default 1024)"
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N rows (default all)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    p.add_argument("--input-key", default="prompt", metavar="KEY", help="the rows' prompt column (default prompt)")
    p.add_argument("--label-key", default="label", metavar="KEY", help="the rows' gold-answer column (default label)")
    p.add_argument(
        "--data-source", default=None, metavar="NAME", help="benchmark name for rows without data_source, e.g. math500"
    )
    p.add_argument(
        "--reward-url", default=None, metavar="URL", help="grade with this reward server (default: start one)"
    )
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the JSON report here")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """The `rlvr eval` handler: bad inputs raise `ConfigError` (exit 2); a failing reward server exits 1."""
    job = prepare_eval(args)
    try:
        with sigterm_as_interrupt():
            report = run_eval(job, progress=_say)
    except (RewardServiceError, ServiceExitedError, TimeoutError) as exc:
        reason = exc.reason if isinstance(exc, ServiceExitedError) else str(exc).splitlines()[0]
        print(f"rlvr eval: error: reward server failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    text = json.dumps(report, indent=2)
    if job.out is not None:
        job.out.write_text(text + "\n", encoding="utf-8")
    say(text)
    return 0


# ---- checks before any work ---------------------------------------------------------------------------------------


def prepare_eval(args: argparse.Namespace) -> EvalJob:
    """Check every input, cheapest first; the first problem raises a one-line `ConfigError`."""
    check_sampling_flags(args.k, args.temperature, args.top_p, args.max_new_tokens, args.limit)
    keys = DataKeys(args.input_key, args.label_key, args.data_source)
    try:
        rows = load_eval_rows(args.data, keys, args.limit)
    except EvalDataError as exc:
        raise ConfigError(str(exc)) from exc
    if args.out is not None:
        check_out_path(args.out)
    check_model_dir(args.model)
    tokenizer = load_checked_tokenizer(args.model)
    if args.reward_url is not None:
        check_reward_server(args.reward_url)
    from trainer.generation import SamplingSettings  # imports torch: after the cheap checks

    settings = SamplingSettings(args.k, args.temperature, args.top_p, args.max_new_tokens, args.seed)
    return EvalJob(args.model, args.data, keys, args.limit, tuple(rows), settings, tokenizer, args.reward_url, args.out)


def check_sampling_flags(k: int, temperature: float, top_p: float, max_new_tokens: int, limit: int | None) -> None:
    """The flags' ranges, named as the user typed them (SamplingSettings checks the same, by its field names)."""
    if k < 1:
        raise ConfigError(f"--k must be >= 1, got {k}")
    if not (math.isfinite(temperature) and temperature >= 0.0):
        raise ConfigError(f"--temperature must be a finite number >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    if temperature == 0.0 and k > 1:
        raise ConfigError(
            f"--temperature 0 is greedy decoding, one answer per prompt, but --k {k} asks for {k}: "
            "use --k 1, or a temperature > 0 to sample"
        )


def check_out_path(out: Path) -> None:
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file path for the JSON report")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: its folder {out.parent} does not exist")


def check_model_dir(model_dir: Path) -> None:
    """A directory with a causal-LM `config.json` (a type `AutoModelForCausalLM` loads), weights and a tokenizer."""
    if not model_dir.is_dir():
        raise ConfigError(f"--model {model_dir}: no such directory")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"--model {model_dir}: no config.json; expected a Hugging Face model directory")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--model {model_dir}: config.json is not valid JSON ({exc})") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(
            f"--model {model_dir}: config.json has model_type {model_type!r}, not a causal LM that "
            "transformers' AutoModelForCausalLM loads"
        )
    if not any(next(model_dir.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ConfigError(f"--model {model_dir}: no weights ({' or '.join(WEIGHT_PATTERNS)})")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"--model {model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")


def load_checked_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The directory's tokenizer, as `AutoTokenizer` loads it; it needs an EOS token to end answers."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # transformers raises many types here; any of them means the same to the user
        raise ConfigError(f"--model {model_dir}: cannot load its tokenizer: {_first_line(exc)}") from exc
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"--model {model_dir}: the tokenizer has no EOS token, so answers could not end")
    return tokenizer


def check_reward_server(url: str) -> None:
    try:
        status = httpx.get(f"{url.rstrip('/')}/readyz", timeout=READY_PROBE_TIMEOUT_S).status_code
    except httpx.HTTPError as exc:
        raise ConfigError(f"--reward-url {url}: unreachable ({type(exc).__name__}: {_first_line(exc)})") from exc
    if status != 200:
        raise ConfigError(f"--reward-url {url}: /readyz answered HTTP {status}, the server is not ready")


# ---- the work -----------------------------------------------------------------------------------------------------


def run_eval(job: EvalJob, progress: Callable[[str], None]) -> dict[str, Any]:
    """Generate, grade and summarize; the JSON-able report."""
    from trainer.generation import generate

    started = time.monotonic()
    with reward_endpoint(job.reward_url) as url, RewardClient(url) as client:
        progress(f"loading {job.model_dir}")
        model = load_model(job.model_dir)
        generating = time.monotonic()
        prompts = [row.prompt for row in job.rows]
        completions = generate(
            model,
            job.tokenizer,
            prompts,
            job.settings,
            progress=lambda done, total: progress(f"generated answers for {done}/{total} prompts"),
        )
        grading = time.monotonic()
        progress(f"grading {sum(len(c) for c in completions)} answers at {url}")
        results = grade_responses(client, job.rows, [[c.text for c in answers] for answers in completions])
        finished = time.monotonic()
    metrics = summarize(prompt_outcomes(job.rows, completions, results), greedy=job.settings.greedy)
    spans = {"wall_time_s": finished - started, "generation_s": grading - generating, "grading_s": finished - grading}
    timings = {name: round(seconds, 3) for name, seconds in spans.items()}
    return build_report(job, metrics, url, timings)


@contextlib.contextmanager
def reward_endpoint(reward_url: str | None) -> Iterator[str]:
    """`reward_url`, or a reward server started for this command (log in a temporary folder), stopped after."""
    if reward_url is not None:
        yield reward_url
        return
    with (
        tempfile.TemporaryDirectory(prefix="rlvr-eval-") as logs,
        run_service("reward-server", [], Path(logs), env=RewardConfig().server_env()) as url,
    ):
        yield url


def load_model(model_dir: Path) -> Any:
    """The causal LM in float32 on the CPU (`generate` puts it in eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def grade_responses(
    client: RewardClient, rows: Sequence[EvalRow], responses: Sequence[Sequence[str]]
) -> list[list[ScoreResult]]:
    """The reward server's verdict on every response (`responses[i]` answers `rows[i]`), in `GRADE_BATCH_ITEMS`
    batches; item ids are `<row>:<sample>`."""
    items = [
        ScoreRequestItem(f"{i}:{j}", response, row.label, row.data_source)
        for i, (row, answers) in enumerate(zip(rows, responses, strict=True))
        for j, response in enumerate(answers)
    ]
    flat: list[ScoreResult] = []
    for start in range(0, len(items), GRADE_BATCH_ITEMS):
        flat.extend(client.score(items[start : start + GRADE_BATCH_ITEMS]))
    graded: list[list[ScoreResult]] = []
    start = 0
    for answers in responses:
        graded.append(flat[start : start + len(answers)])
        start += len(answers)
    return graded


def prompt_outcomes(
    rows: Sequence[EvalRow], completions: Sequence[Sequence[Completion]], results: Sequence[Sequence[ScoreResult]]
) -> list[PromptOutcome]:
    """Join each prompt's completions (length, cut or not) with their verdicts."""
    return [
        PromptOutcome(
            samples=tuple(
                SampleOutcome(r.reward, r.status, len(c.token_ids), c.finish_reason == "length")
                for c, r in zip(answers, verdicts, strict=True)
            ),
            level=row.level,
        )
        for row, answers, verdicts in zip(rows, completions, results, strict=True)
    ]


def build_report(job: EvalJob, metrics: EvalMetrics, reward_url: str, timings: dict[str, float]) -> dict[str, Any]:
    """What was evaluated and how (model, data, exact sampling settings), the metrics, where graded, how long."""
    settings = job.settings
    return {
        "model_dir": str(job.model_dir.resolve()),
        "data_file": str(job.data_file.resolve()),
        "input_key": job.keys.input_key,
        "label_key": job.keys.label_key,
        "default_data_source": job.keys.default_data_source,
        "limit": job.limit,
        "sampling": {
            "k": settings.n,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "top_k": 0,  # trainer/generation.py never truncates to the top k
            "max_new_tokens": settings.max_new_tokens,
            "seed": settings.seed,
        },
        **metrics.as_json(),
        "reward_url": reward_url,
        "reward_server_started": job.reward_url is None,
        **timings,
    }


def _say(message: str) -> None:
    print(f"rlvr eval: {message}", file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
