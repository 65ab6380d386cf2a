"""The run's experiment config: one schema (a root and one module per component), parsed once, validated loudly.

Every knob a user can set is reachable from a TOML preset and `--set key.path=value`. The launcher resolves the
config once and writes `runs/<id>/config.json`; every child process loads that resolved file.
"""

from services.core.config.credit import CREDIT_STRATEGIES, ENTROPY_STRATEGIES, CreditConfig, CreditStrategy
from services.core.config.evaluation import EvaluationConfig
from services.core.config.loading import (
    ConfigError,
    apply_overrides,
    format_validation_error,
    load_run_config,
    parse_override,
    read_config_file,
)
from services.core.config.policy_loss import (
    AGGREGATIONS,
    SEQ_MEAN_DENOMINATORS,
    Aggregation,
    KLEstimator,
    PolicyLossConfig,
    RatioLevel,
    SeqMeanDenominator,
)
from services.core.config.queues import QueueSettings
from services.core.config.ray import RayConfig
from services.core.config.reward import RewardConfig
from services.core.config.rollout import (
    HFBackendConfig,
    ReplayBackendConfig,
    RolloutBackendConfig,
    RolloutConfig,
    SamplingConfig,
    VLLMBackendConfig,
)
from services.core.config.run import RunConfig, canonical_json, config_differences
from services.core.config.trainer import CheckpointConfig, EngineConfig, OptimizerConfig, TrainerConfig
from services.core.config.world import WorldConfig, WorldModelConfig, WorldSFTConfig, WorldTaskConfig

__all__ = [
    "AGGREGATIONS",
    "CREDIT_STRATEGIES",
    "ENTROPY_STRATEGIES",
    "SEQ_MEAN_DENOMINATORS",
    "Aggregation",
    "CheckpointConfig",
    "ConfigError",
    "CreditConfig",
    "CreditStrategy",
    "EngineConfig",
    "EvaluationConfig",
    "HFBackendConfig",
    "KLEstimator",
    "OptimizerConfig",
    "PolicyLossConfig",
    "QueueSettings",
    "RatioLevel",
    "RayConfig",
    "ReplayBackendConfig",
    "RewardConfig",
    "RolloutBackendConfig",
    "RolloutConfig",
    "RunConfig",
    "SamplingConfig",
    "SeqMeanDenominator",
    "TrainerConfig",
    "VLLMBackendConfig",
    "WorldConfig",
    "WorldModelConfig",
    "WorldSFTConfig",
    "WorldTaskConfig",
    "apply_overrides",
    "canonical_json",
    "config_differences",
    "format_validation_error",
    "load_run_config",
    "parse_override",
    "read_config_file",
]
