"""Weight distribution on Ray: the trainer publishes each new policy once, every rollout worker fetches the latest.

The trainer puts a state dict into Ray's object store (`publish_weights`: tensors as numpy arrays, which the store
keeps once in shared memory and workers on the node read without a copy) and registers the object with a named
`WeightStore` actor of the run, under a policy version that must grow. A worker asks the store for the latest
version before every batch (one small actor call), and fetches and loads the weights only when they are newer; a
worker that starts late or restarts does the same before it generates anything, so nobody needs to push to it.
No file is written per step. The store keeps only the latest version: older objects are freed by Ray's reference
counting once no worker holds them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray
import torch


class StaleWeightsError(ValueError):
    """Weights were offered under a policy version that is not newer than the store's."""


class WeightStore:
    """The latest published weights of a run (a Ray actor: `weight_store(run_id)`)."""

    def __init__(self) -> None:
        self._version = 0
        self._refs: list[ray.ObjectRef[Any]] = []

    def publish(self, version: int, refs: list[ray.ObjectRef[Any]]) -> int:
        """Make `refs[0]` the latest weights; the ref travels inside a list so Ray does not resolve it."""
        if version <= self._version:
            raise StaleWeightsError(f"policy version {version} is not newer than the published {self._version}")
        if len(refs) != 1:
            raise ValueError(f"publish takes one object ref, got {len(refs)}")
        self._version, self._refs = version, refs
        return version

    def latest_version(self) -> int:
        return self._version

    def latest(self) -> tuple[int, list[ray.ObjectRef[Any]]]:
        return self._version, self._refs


def store_name(run_id: str) -> str:
    return f"rlvr-weights-{run_id}"


def weight_store(run_id: str) -> Any:
    """The run's weight store actor, created if it does not exist. The process that creates it owns it: Ray ends the
    actor when its owner dies or drops every handle, so the launcher creates it and keeps the handle for the run."""
    actor = ray.remote(num_cpus=0)(WeightStore)
    return actor.options(name=store_name(run_id), get_if_exists=True).remote()


def find_weight_store(run_id: str) -> Any:
    """The run's existing weight store (rollout workers never create it: a worker owning it would take it down with
    it when it dies). A missing store is an error naming what to do."""
    try:
        return ray.get_actor(store_name(run_id))
    except ValueError:
        raise RuntimeError(
            f"no weight store {store_name(run_id)!r} in this Ray namespace: the launcher creates it with "
            "weight_store(run_id) before it starts rollout workers"
        ) from None


def to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray[Any, Any]]:
    """A state dict as numpy arrays (what the object store shares without copying)."""
    return {name: tensor.detach().cpu().contiguous().numpy() for name, tensor in state.items()}


def to_tensors(arrays: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, torch.Tensor]:
    """Tensors viewing the fetched arrays without a copy. The store's memory is read-only; the backends only read it
    (they copy it into their own weights), so torch's warning about non-writable arrays is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {name: torch.from_numpy(np.asarray(array)) for name, array in arrays.items()}


def fetch_newer(store: Any, current_version: int) -> tuple[int, dict[str, torch.Tensor]] | None:
    """The store's latest weights if they are newer than `current_version` (one small call when they are not)."""
    if int(ray.get(store.latest_version.remote())) <= current_version:
        return None
    version, refs = ray.get(store.latest.remote())
    return int(version), to_tensors(ray.get(refs[0]))


def publish_weights(store: Any, state: Mapping[str, torch.Tensor], version: int) -> int:
    """Put `state` into the object store and make it the run's latest weights under `version`."""
    ref = ray.put(to_numpy(state))
    return int(ray.get(store.publish.remote(version, [ref])))
