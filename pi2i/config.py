"""One validated configuration for every step of the pipeline.

Defaults live here (`pi2i config` prints them as YAML); a YAML file overrides any subset.
Validation is pydantic with ``extra="forbid"``: an unknown or invalid key fails with a message naming the
dotted key and what is allowed (see :func:`load_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pi2i.contracts import BEHAVIORS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_behaviors(cls, v: list[str]) -> list[str]:
    """Every behaviour named must be one of the contract's (click, cart, fav, buy)."""
    bad = [b for b in v if b not in BEHAVIORS]
    if bad:
        raise ValueError(f"unknown behavior(s) {bad}; allowed: {list(BEHAVIORS)}")
    return v


class DataConfig(_Section):
    chunk_rows: int = Field(500_000, ge=1_000, description="about this many rows per streamed chunk in loaders")
    min_ts: str = Field("1995-01-01T00:00:00Z", description="events before this are quarantined "
                        "(MovieLens 100k starts in 1997)")
    max_ts: str = Field("2100-01-01T00:00:00Z", description="events after this are quarantined")
    test_days: float = Field(1.0, gt=0, description="temporal split: the last N days are the test period")
    delimiter: str | None = Field(None, min_length=1, description="csv format: field delimiter (default ',')")
    ts_unit: Literal["auto", "s", "ms", "us", "iso"] = Field(
        "auto", description="csv/parquet timestamps: epoch unit, ISO 8601 strings, or auto-detect")
    sort_max_rows: int = Field(20_000_000, ge=0, description="loaders sort events by (user_id, ts) up to this "
                               "many rows; above it they keep input order")


class SwingConfig(_Section):
    top_t: int = Field(1250, ge=1, description="targets kept per trigger (paper: 1250)")
    alpha: float = Field(1.0, ge=0.0, description="smoothing in 1/(alpha + |I_u ∩ I_v|)")
    behaviors: list[str] = Field(default_factory=lambda: list(BEHAVIORS), min_length=1)
    max_items_per_user: int = Field(0, ge=0, description="keep the most recent N distinct items; 0 = no cap")
    max_users_per_item: int = Field(0, ge=0, description="deterministic seeded sample; 0 = no cap")
    workers: int = Field(1, ge=1, description="Ray tasks sharing the trigger range")
    seed: int = 0

    _known_behaviors = field_validator("behaviors")(_check_behaviors)


class SamplingConfig(_Section):
    num_triggers: int = Field(20, ge=1, description="L: distinct recent clicks used as triggers")
    seq_len: int = Field(50, ge=1, description="behaviour sequence length seen by target attention")
    hard_negatives: int = Field(20, ge=0, description="from the rows of the positive triggers (paper: 20)")
    easy_negatives: int = Field(80, ge=0, description="from the rows of the other triggers (paper: 80)")
    min_history: int = Field(1, ge=1, description="earliest training position in a user's sequence")
    behaviors: list[str] = Field(default_factory=lambda: list(BEHAVIORS), min_length=1,
                                 description="event behaviours that count as clicks of the sequence")
    dedup_consecutive: bool = Field(True, description="collapse back-to-back repeats of the same item")
    max_samples: int = Field(0, ge=0, description="keep a seeded sample of N training samples; 0 = all")
    seed: int = 0

    _known_behaviors = field_validator("behaviors")(_check_behaviors)


class ModelConfig(_Section):
    embed_dim: int = Field(32, ge=4)
    num_heads: int = Field(2, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [64, 32], min_length=1,
                              description="MLP widths of the query and the logit head (sized for ~10k cands/10 ms)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention: Literal["target", "self"] = "target"
    trigger_feature: Literal["multi", "random", "none"] = "multi"
    max_trigger_hits: int = Field(8, ge=1, description="triggers kept in the multi-value feature")
    vocab_min_count: int = Field(2, ge=1, description="items clicked fewer times share the OOV bucket")


class TrainConfig(_Section):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(2, ge=0, description="early stopping on the validation metric; 0 = off")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    num_workers: int = Field(0, ge=0, description="Ray Train workers; 0 = run the loop in-process")
    use_gpu: bool = False
    storage_path: str | None = Field(None, description="Ray Train checkpoints/results; None = a temp dir")
    max_batches_per_epoch: int = Field(
        200, ge=0, description="cap on batches per epoch (CPU-sized default); 0 = the whole set (use on a GPU cluster)")
    torch_threads: int = Field(0, ge=0, description="intra-op threads per worker; 0 = torch's default")
    seed: int = 0


class EvalConfig(_Section):
    ks: list[int] = Field(default_factory=lambda: [20, 50, 100, 200, 500, 1000, 2000, 4000], min_length=1)
    classic_truncation: int = Field(50, ge=1, description="uniform per-trigger cut of classic Swing I2I")
    gate_k: int = Field(100, ge=1, description="K at which the gate compares methods")
    gate_tolerance: float = Field(0.01, ge=0, description="allowed relative drop vs the live version")
    max_users: int = Field(0, ge=0, description="evaluate a seeded sample of test users; 0 = all")
    exclude_seen: bool = Field(True, description="no method recommends items of the user's history window; "
                               "those items are removed from the user's test set too")
    chunk_users: int = Field(2000, ge=1, description="users per evaluation chunk (bounds memory)")
    seed: int = 0


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    max_k: int = Field(500, ge=1)
    redis_url: str | None = None
    cache_ttl_s: int = Field(3600, ge=0)
    history_len: int = Field(50, ge=1)
    cache_size: int = Field(50_000, ge=1, description="entries of the in-process LRU cache")
    cache_k: int = Field(100, ge=1, description="items kept per cached recommendation (larger k computes)")
    redis_timeout_s: float = Field(0.05, gt=0, description="Redis socket timeout; on failure answers are computed")
    redis_retry_s: float = Field(2.0, ge=0, description="after a Redis failure, skip it this long")
    nearline_workers: int = Field(1, ge=1, description="threads running the click-triggered recompute")
    nearline_wait_s: float = Field(0.25, ge=0, description="a miss waits this long for a pending recompute")
    poll_s: float = Field(10.0, ge=0, description="registry CURRENT poll interval for hot swap; 0 = off")
    max_body_bytes: int = Field(65_536, ge=256, description="larger request bodies get 413")
    accept_unknown_items: bool = Field(False, description="accept /events for items the live version lacks")
    workers: int = Field(1, ge=1, description="server processes; >1 needs redis_url and a Feast history store")


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    swing: SwingConfig = Field(default_factory=SwingConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the key."""


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config: " + "; ".join(lines)


def parse_config(data: dict | None) -> Config:
    try:
        return Config.model_validate(data or {})
    except ValidationError as e:
        raise ConfigError(_format(e)) from None


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (local or URI), then ``overrides`` (nested dict)."""
    data: dict = {}
    if path is not None:
        from pi2i.contracts import resolve

        fs, p = resolve(str(path))
        try:
            with fs.open_input_stream(p) as f:
                data = yaml.safe_load(f.read().decode()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
    if overrides:
        data = _merge(data, overrides)
    return parse_config(data)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump_defaults() -> str:
    return yaml.safe_dump(Config().model_dump(), sort_keys=False)
