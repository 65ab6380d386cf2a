"""TrainerWorker actors on a local Ray: two data-parallel ranks (gloo) train the same step, agree on the weights,
publish them to the run's weight store for the rollout workers, and checkpoint and restore together."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch

from services.core.schedule import Phase
from services.rollout.weights import fetch_newer, publish_weights, weight_store
from tests.run_configs import run_config
from tests.tiny_models import write_prompts, write_tiny_model
from tests.trainer_ranks import scored_groups
from trainer.worker import spawn_trainer_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, namespace="rlvr-trainer-tests", log_to_driver=False)
    yield
    ray.shutdown()


def test_two_ranks_train_publish_and_checkpoint(ray_session: None, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model")
    prompts = write_prompts(tmp_path / "prompts.jsonl", 8)
    rollout = {
        "backend": {"type": "hf", "model": str(model), "prompts": str(prompts)},
        "prompts_per_step": 4, "samples_per_prompt": 4,
    }  # fmt: skip
    trainer = {
        "optimizer": {"lr": 1e-3, "implementation": "torch"},
        "engine": {"world_size": 2, "zero_stage": 2, "param_dtype": "fp32", "micro_batch_size": 4},
        "checkpoint": {"keep": 2, "hf_export": False},
    }
    config = run_config("trainer-workers", 4, rollout=rollout, trainer=trainer)
    ranks = spawn_trainer_group(config, model, tmp_path / "run", cpus_per_rank=0.5, torch_threads=1)
    try:
        assert ray.get([r.rank_info.remote() for r in ranks]) == [
            {"rank": 0, "world_size": 2, "grad_accum": 2}, {"rank": 1, "world_size": 2, "grad_accum": 2},
        ]  # fmt: skip
        groups = scored_groups(4, 4, seed=3)
        phase = Phase(step=1, progress=0.0, ratio=0.3, stage="anneal")
        metrics = ray.get([r.train.remote(1, groups, phase) for r in ranks])
        assert metrics[0] == metrics[1]  # every reduced metric is the same on both ranks
        assert metrics[0]["train/policy_version"] == 1.0 and 0 < metrics[0]["train/optimized_token_fraction"] < 1
        weights = ray.get([r.weights.remote() for r in ranks])
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
        store = weight_store(config.run_id)
        publish_weights(store, weights[0], 1)
        fetched = fetch_newer(store, 0)
        assert fetched is not None and fetched[0] == 1
        assert all(torch.equal(fetched[1][k], weights[0][k]) for k in weights[0])

        saved = ray.get([r.save.remote({"schedule": "state"}) for r in ranks])
        assert saved[0] == saved[1] and (Path(saved[0]) / "rlvr_state.json").is_file()
        second = ray.get([r.train.remote(2, scored_groups(4, 4, seed=4), phase.model_copy(update={"step": 2}))
                          for r in ranks])  # fmt: skip
        assert second[0]["train/policy_version"] == 2.0
        assert ray.get([r.restore.remote(1) for r in ranks])[0] == {"step": 1, "policy_version": 1, "next_step": 2}
        restored = ray.get(ranks[0].weights.remote())
        assert all(torch.equal(restored[k], weights[0][k]) for k in weights[0])
    finally:
        ray.get([r.close.remote() for r in ranks])
        for r in ranks:
            ray.kill(r)
