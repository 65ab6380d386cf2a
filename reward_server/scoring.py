"""From wire requests to pool jobs and back: limits, kind resolution, per-item validity, the OpenRLHF shim."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from reward_server.errors import RequestShapeError
from reward_server.limits import check_batch_size, check_text_lengths
from reward_server.metrics import RewardMetrics
from reward_server.pool import ItemOutcome, ScoreJob, ScorerPool
from reward_server.schemas import (
    OpenRLHFRewardRequest,
    OpenRLHFRewardResponse,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
)
from reward_server.scorers import Kind, UnknownKindError, resolve_kind
from reward_server.settings import RewardSettings

_NO_KIND = "none"  # metrics label for items answered `invalid` before a kind was known


def check_score_request(request: ScoreRequest, settings: RewardSettings) -> None:
    """413 when the batch or one of its strings is over the configured limits."""
    check_batch_size(len(request.items), settings.max_items)
    check_text_lengths(_score_request_texts(request.items), settings.max_text_chars)


def _score_request_texts(items: Sequence[ScoreItem]) -> Iterator[tuple[str, str | None]]:
    for i, item in enumerate(items):
        yield f"items.{i}.response", item.response
        yield f"items.{i}.ground_truth", item.ground_truth
        yield f"items.{i}.prompt", item.prompt


def resolve_item(item: ScoreItem) -> tuple[Kind | None, str | None]:
    """(kind, None) for a gradable item, (None, reason) for an `invalid` one."""
    if not item.ground_truth.strip():
        return None, "ground_truth is empty"
    try:
        return resolve_kind(item.kind, item.data_source), None
    except UnknownKindError as exc:
        return None, str(exc)


def to_result(item_id: str | int, outcome: ItemOutcome) -> ScoreResult:
    reward = outcome.reward if outcome.status == "ok" else 0.0
    return ScoreResult(
        id=item_id, reward=reward, status=outcome.status, detail=outcome.detail, extracted=outcome.extracted
    )


async def score_request(
    request: ScoreRequest, pool: ScorerPool, metrics: RewardMetrics, deadline: float
) -> ScoreResponse:
    """Grade every item; invalid ones are answered without a worker, the rest go to the pool as one batch."""
    resolved = [resolve_item(item) for item in request.items]
    jobs = [
        ScoreJob(kind, item.response, item.ground_truth)
        for item, (kind, _) in zip(request.items, resolved, strict=True)
        if kind is not None
    ]
    outcomes = iter(await pool.score_batch(jobs, deadline))
    results: list[ScoreResult] = []
    for item, (kind, reason) in zip(request.items, resolved, strict=True):
        if kind is None:
            results.append(ScoreResult(id=item.id, reward=0.0, status="invalid", detail=reason))
            metrics.items.labels(kind=_NO_KIND, status="invalid").inc()
            continue
        outcome = next(outcomes)
        results.append(to_result(item.id, outcome))
        metrics.items.labels(kind=kind, status=outcome.status).inc()
    return ScoreResponse(results=results)


# ---------------------------------------------------------------- OpenRLHF `/get_reward`


def split_query(query: str, prompt: str | None) -> str:
    """The response part of an OpenRLHF query (prompt + response, decoded by OpenRLHF's tokenizer).

    1. the prompt is a prefix of the query: the rest is the response;
    2. the prompt occurs inside the query (e.g. a BOS token decoded in front of it): the text after its first
       occurrence;
    3. otherwise (no prompts sent, or decoding changed the prompt's text): the whole query. The scorers take the
       last answer in the text, so an answer shown in the prompt only matters in this fallback.
    """
    if not prompt:
        return query
    if query.startswith(prompt):
        return query[len(prompt) :]
    at = query.find(prompt)
    return query[at + len(prompt) :] if at >= 0 else query


def check_openrlhf_request(request: OpenRLHFRewardRequest, settings: RewardSettings) -> None:
    """422 when the lists disagree in length, 413 when over the limits."""
    n = len(request.query)
    if len(request.labels) != n or (request.prompts is not None and len(request.prompts) != n):
        prompts = "absent" if request.prompts is None else len(request.prompts)
        raise RequestShapeError(
            f"query, prompts and labels must have one entry per sample: got query={n}, prompts={prompts}, "
            f"labels={len(request.labels)}",
            loc=("body", "labels" if len(request.labels) != n else "prompts"),
        )
    check_batch_size(n, settings.max_items)
    texts: list[tuple[str, str | None]] = [(f"query.{i}", q) for i, q in enumerate(request.query)]
    texts += [(f"labels.{i}", label) for i, label in enumerate(request.labels)]
    texts += [(f"prompts.{i}", p) for i, p in enumerate(request.prompts or [])]
    check_text_lengths(texts, settings.max_text_chars)


async def score_openrlhf(
    request: OpenRLHFRewardRequest, pool: ScorerPool, metrics: RewardMetrics, kind: Kind, deadline: float
) -> OpenRLHFRewardResponse:
    """Score each sample with `kind`; failures give reward 0.0 and are flagged in `extra_logs`."""
    prompts: Sequence[str | None] = request.prompts or [None] * len(request.query)
    items = [
        ScoreItem(id=i, response=split_query(q, p), ground_truth=label, kind=kind)
        for i, (q, p, label) in enumerate(zip(request.query, prompts, request.labels, strict=True))
    ]
    results = (await score_request(ScoreRequest(items=items), pool, metrics, deadline)).results
    rewards = [r.reward for r in results]
    return OpenRLHFRewardResponse(
        rewards=rewards,
        scores=rewards,
        extra_logs={
            "reward_timeout": [float(r.status == "timeout") for r in results],
            "reward_failed": [float(r.status in ("error", "invalid")) for r in results],
        },
    )
