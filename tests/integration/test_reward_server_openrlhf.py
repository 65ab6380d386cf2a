"""OpenRLHF's own remote-reward client (`openrlhf.utils.agent`) against a real reward server process.

OpenRLHF is installed by scripts/setup.sh with `pip install --no-deps openrlhf` (plus `pylatexenc`, which
`openrlhf.utils` imports). Where it is absent the test fails under CI and is skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.service_processes import RewardServerProcess, run_reward_server

try:
    from openrlhf.utils import agent
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set but OpenRLHF's client cannot be imported: {exc}") from exc
    pytest.skip(f"openrlhf not installed (scripts/setup.sh installs it): {exc}", allow_module_level=True)
import torch

pytestmark = pytest.mark.integration

# The prompt shows a worked example whose boxed answer (7) is wrong for the question: the server must score the
# response only, which it does by stripping the prompt from the front of OpenRLHF's query.
PROMPT = "Example: \\boxed{7}.\nQuestion: what is 1 + 1? Put the answer in \\boxed{}.\nAssistant: "


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RewardServerProcess]:
    with run_reward_server(tmp_path_factory.mktemp("openrlhf"), workers=1) as proc:
        yield proc


class CharTokenizer:
    """One token per character: enough of the HF tokenizer interface for SingleTurnAgentExecutor."""

    def __call__(self, text: str, add_special_tokens: bool = False, return_tensors: str = "pt") -> dict[str, Any]:
        return {"input_ids": torch.tensor([[ord(c) for c in text]])}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)


@dataclass
class _Completion:
    token_ids: list[int]
    text: str
    finish_reason: str = "stop"
    logprobs: None = None


@dataclass
class _RequestOutput:
    outputs: list[_Completion]


@dataclass
class ScriptedEngine:
    """Stands in for vLLM's AsyncLLMEngine: always 'generates' the scripted text."""

    text: str
    calls: list[list[int]] = field(default_factory=list)

    async def generate(self, prompt_token_ids: list[int], params: Any, multi_modal_data: Any = None) -> _RequestOutput:
        self.calls.append(prompt_token_ids)
        return _RequestOutput([_Completion([ord(c) for c in self.text], self.text)])


@dataclass
class SamplingParams:
    max_tokens: int | None = 64
    logprobs: int | None = None


def _execute(url: str, generated: str, label: str) -> dict[str, Any]:
    executor = agent.SingleTurnAgentExecutor(f"{url}/get_reward")
    engine = ScriptedEngine(generated)
    coroutine = executor.execute(PROMPT, label, SamplingParams(), 4096, CharTokenizer(), engine)
    return dict(asyncio.run(coroutine))


@pytest.mark.parametrize(("generated", "label", "reward"), [("so \\boxed{2}", "2", 1.0), ("\\boxed{3}", "2", 0.0)])
def test_single_turn_executor_gets_our_reward(
    server: RewardServerProcess, generated: str, label: str, reward: float
) -> None:
    output = _execute(server.url, generated, label)
    # OpenRLHF keeps the server's per-request lists as they come (one sample per request here) ...
    assert output["reward"] == [reward]
    assert output["scores"] == [reward]
    assert output["extra_logs"] == {"reward_timeout": [0.0], "reward_failed": [0.0]}
    # ... and its samples generator turns them into tensors like this; they must be numeric.
    assert torch.tensor([output["reward"]]).flatten().tolist() == [reward]
    for value in output["extra_logs"].values():
        torch.tensor([value])


def test_http_batch_sharded_over_two_endpoints(server: RewardServerProcess) -> None:
    url = f"{server.url}/get_reward"
    executor = agent.SingleTurnAgentExecutor([url, url])
    answers = ["2", "3", "5", "7", "11"]
    queries = [PROMPT + f"\\boxed{{{a}}}" for a in answers]
    labels = ["2", "3", "4", "7", "12"]
    replies = asyncio.run(executor._fetch_rewards_via_http(queries, [PROMPT] * 5, labels))
    rewards = [r for reply in replies for r in reply["rewards"]]
    assert rewards == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert all(set(reply) == {"rewards", "scores", "extra_logs"} for reply in replies)


def test_without_prompts_whole_query_is_scored(server: RewardServerProcess) -> None:
    """Old OpenRLHF clients sent only `query` + `labels`: the last answer in the whole text counts."""
    import httpx

    reply = httpx.post(f"{server.url}/get_reward", json={"query": [PROMPT + "\\boxed{2}"], "labels": ["2"]}).json()
    assert reply["rewards"] == [1.0]
