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


def _check_behaviors(cls: type, v: list[str]) -> list[str]:
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
    max_future_skew_s: float = Field(86_400.0, ge=0, description="events later than the load time plus this many "
                                     "seconds are quarantined as future_ts (a clock error would move the split)")
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
    include_synthetic: bool = Field(True, description="also count rows of behaviour 'synthetic' (LLM-I2I "
                                    "augmentation, present only in augmented events) as clicks")

    _known_behaviors = field_validator("behaviors")(_check_behaviors)


class SamplingConfig(_Section):
    num_triggers: int = Field(20, ge=1, description="L: distinct recent clicks used as triggers")
    seq_len: int = Field(50, ge=1, description="behaviour sequence length seen by target attention")
    hard_negatives: int = Field(20, ge=0, description="from the rows of the positive triggers (paper: 20)")
    easy_negatives: int = Field(80, ge=0, description="from the rows of the other triggers (paper: 80)")
    target_horizon: int = Field(1, ge=1, description="the target is one of the next N clicks (1 = the next "
                                                    "click, the paper); >1 trains for a longer horizon")
    future_exclusion: int = Field(50, ge=0, description="negatives never include the user's next N clicks "
                                                        "(false negatives); 0 = off")
    fill_negatives: bool = Field(True, description="fill easy slots the other triggers' rows cannot fill from "
                                                   "the positive triggers' rows (no padded negatives)")
    min_history: int = Field(1, ge=1, description="earliest training position in a user's sequence")
    behaviors: list[str] = Field(default_factory=lambda: list(BEHAVIORS), min_length=1,
                                 description="event behaviours that count as clicks of the sequence")
    dedup_consecutive: bool = Field(True, description="collapse back-to-back repeats of the same item")
    max_samples: int = Field(0, ge=0, description="keep a seeded sample of N training samples; 0 = all")
    seed: int = 0

    _known_behaviors = field_validator("behaviors")(_check_behaviors)


class ModelConfig(_Section):
    embed_dim: int = Field(32, ge=4)
    num_heads: int = Field(1, ge=1, description="target-attention heads (Eq. 9-10); see `hidden`")
    hidden: list[int] = Field(default_factory=lambda: [32, 32], min_length=1,
                              description="MLP widths of the query and the logit head. This default with 1 head "
                              "scored the validation and test HR of [64, 32] with 2 heads on MovieLens, demo and "
                              "Taobao (benchmarks/bench_quality.py --config) at ~35% less model time per step; "
                              "the per-candidate layers and attention are most of a training step")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention: Literal["target", "self"] = "target"
    trigger_feature: Literal["multi", "random", "none"] = "multi"
    max_trigger_hits: int = Field(8, ge=1, description="triggers kept in the multi-value feature")
    vocab_min_count: int = Field(2, ge=1, description="items clicked fewer times share the OOV bucket")
    stability: float = Field(0.5, ge=0.0, le=10.0, description="scoring: + stability * log share of the "
                             "candidate's category in the user's recent history, so one click does not move "
                             "every recommendation to its category; 0 = the scorer alone (0.5: best "
                             "HR@100 on the demo split, benchmarks/bench_recency.py)")


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
    shards: int = Field(0, ge=0, description="CPU: slices each batch is cut into, each computed on one thread "
                        "with one torch thread, gradients summed in slice order, so results never depend on how "
                        "many threads run them; 0 = the CPU quota; more slices than cores run on the quota's "
                        "threads or one thread each, chosen from measured step times (helps under contention); "
                        "1 = one intra-op pool per batch")
    torch_threads: int = Field(0, ge=0, description="intra-op threads per worker; 0 = chosen from measured step "
                                                    "times within the CPU quota")
    logq_correction: bool = Field(True, description="sampled softmax with logQ correction: subtract each "
                                                    "candidate's log draw probability from its training logit")
    calibration_samples: int = Field(
        1000, ge=0, description="validation samples whose FULL candidate pool is ranked to choose the popularity /"
        " Swing weights of the final score (HR@eval.gate_k); 0 = no calibration (pure model ordering)")
    popular_merge: bool = Field(
        True, description="merge the popular items outside the pool into the final ranking where their hit rate "
        "per slot, measured on the calibration users, beats the pool's (pi2i.prs.merge); false = the pool only")
    seed: int = 0


class EvalConfig(_Section):
    ks: list[int] = Field(default_factory=lambda: [20, 50, 100, 200, 500, 1000, 2000, 4000], min_length=1)
    classic_truncation: int = Field(50, ge=1, description="uniform per-trigger cut of classic Swing I2I")
    gate_k: int = Field(100, ge=1, description="K at which the gate compares methods")
    gate_method: str = Field("pi2i", min_length=1, description="the candidate method the gate decides on")
    gate_tolerance: float = Field(0.01, ge=0, description="allowed relative drop vs the live version re-scored "
                                  "on the same users: mean paired HR difference >= -tolerance * live HR")
    max_users: int = Field(0, ge=0, description="evaluate a seeded sample of test users; 0 = all")
    exclude_seen: Literal["all", "window", "none"] = Field(
        "all", description="items no method may recommend, also removed from the user's test set: all = every "
        "train click of the user; window = the last max(sampling.seq_len, serving.history_len) clicks; none")
    pad_with_popular: bool = Field(True, description="pad every method's short list with popular items (not "
                                   "seen, not already listed) up to K, as serving pads a short answer; false = "
                                   "score each method on what it retrieves alone")
    tail_head_share: float = Field(0.8, gt=0, le=1, description="long tail for tail_hr: items outside the "
                                   "most clicked tail_head_share of the train catalog (0.8: the bottom 20%)")
    relevance_recent: int = Field(5, ge=1, description="relevance@K: a retrieved item is relevant when its "
                                  "category is one of the user's last N distinct clicked items'")
    chunk_users: int = Field(2000, ge=1, description="users per evaluation chunk (bounds memory)")
    seed: int = 0

    @field_validator("exclude_seen", mode="before")
    @classmethod
    def _legacy_bool(cls, v: object) -> object:
        """The former boolean: true meant the history window, false nothing."""
        return {True: "window", False: "none"}.get(v, v) if isinstance(v, bool) else v


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
    max_concurrency: int = Field(64, ge=1, description="requests computed at once per worker (after their body "
                                 "is read); more get 429 + Retry-After")
    body_timeout_s: float = Field(5.0, gt=0, description="a request body not fully received within this gets 408")
    max_body_readers: int = Field(2048, ge=1, description="requests whose body is still arriving; more get 503")
    timeout_keep_alive_s: int = Field(5, ge=1, description="idle keep-alive connections are closed after this")
    read_auth: bool = Field(False, description="/recommend, /similar, /metrics and /version need a token too "
                            "(PI2I_READ_TOKEN, or the write/admin token)")
    max_clock_skew_s: float = Field(300.0, ge=0, description="/events ts at most this far ahead of the server")
    max_pending_recomputes: int = Field(10_000, ge=1, description="users waiting for a nearline recompute; "
                                        "clicks of further users get 429")
    online_users_max: int = Field(100_000, ge=1, description="users whose online clicks are kept (LRU)")
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of a 429/503")
    prewarm_users: int = Field(2000, ge=0, description="recently active users pre-computed before a swap")
    prewarm_s: float = Field(15.0, ge=0, description="time budget of the pre-warm before a swap")


class EaseConfig(_Section):
    lambda_: float = Field(200.0, gt=0, description="L2 weight λ of P = (XᵀX + λI)⁻¹ (Steck 2019)")
    max_items: int = Field(20_000, ge=1, description="refuse catalogs larger than this (dense n×n float32)")
    why_top: int = Field(5, ge=1, description="history items listed as the reason of each recommendation")


class PDNConfig(_Section):
    embed_dim: int = Field(16, ge=2, description="per one-hot feature; a field is the concat of its features")
    hidden: list[int] = Field(default_factory=lambda: [32, 16], min_length=1, description="TrigNet/SimNet MLPs")
    direct_dim: int = Field(32, ge=2, description="k: width of p_u and q_i of the direct net (Eq. 11)")
    direct_net: bool = Field(True, description="ablation switch: False drops the direct path (Eq. 11)")
    bias_net: bool = Field(True, description="ablation switch: False drops the training-only bias net (Eq. 12)")
    loss: Literal["bce", "softmax"] = Field("softmax", description="bce: Eq. 13 per candidate (paper); softmax: "
                                            "cross-entropy of the positive against its negatives (as PI2I)")
    negatives: int = Field(40, ge=0, description="negatives kept per sample (hard:easy ratio kept); 0 = all")
    max_batches_per_epoch: int = Field(150, ge=0, description="PDN's cap (train.* gives epochs, batch size); "
                                       "0 = train.max_batches_per_epoch")
    score_buckets: int = Field(32, ge=2, description="quantile buckets of the Swing score in c_ji")
    vocab_min_count: int = Field(2, ge=1, description="items clicked fewer times share the OOV id embedding")
    top_m: int = Field(20, ge=1, description="§5.1 step 2: triggers kept by TrigNet at retrieval")
    index_k: int = Field(300, ge=1, description="§5.2: targets kept per trigger in the SimNet-scored index")
    why_top: int = Field(5, ge=1, description="paths listed as the reason of each recommendation")


class MTMHConfig(_Section):
    embed_dim: int = Field(32, ge=2, description="item id embedding; side-info embeddings use half")
    hidden: list[int] = Field(default_factory=lambda: [64], description="MLP of each head before its output")
    out_dim: int = Field(32, ge=2, description="item embedding size of each head")
    temperature: float = Field(0.1, gt=0, description="τ of InfoNCE over cosine similarities (Eq. 1)")
    content_temperature: float = Field(0.1, gt=0, description="τ of the soft relevance labels q (Eq. 2)")
    w_r: float = Field(0.5, ge=0, description="weight of the relevance loss in L_mt = L_e + w_r·L_r (Eq. 3)")
    pair_window: int = Field(3, ge=1, description="co-engaged pairs: each click with its previous N distinct")
    sampled_negatives: int = Field(256, ge=0, description="uniformly sampled negatives shared by a batch")
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(512, ge=2)
    lr: float = Field(3e-3, gt=0)
    max_batches_per_epoch: int = Field(150, ge=0, description="0 = every pair each epoch")
    item_embeddings: str | None = Field(None, description="parquet (item_id, embedding list<float>): content "
                                        "embeddings for the relevance targets instead of side info")
    content_weights: dict[str, float] = Field(
        default_factory=lambda: {"category_id": 1.0, "brand_id": 0.5},
        description="side-info content similarity: weight of each shared field")
    alpha: float = Field(0.5, ge=0, le=1, description="quota share of the engagement head in the merge (§3.5)")
    num_triggers: int = Field(10, ge=1, description="recent distinct items queried, one ANN search each")
    k_ann: int = Field(200, ge=1, description="neighbours per trigger and head from the ANN (§3.5)")
    recency_decay: float = Field(0.9, gt=0, le=1, description="preranker: trigger r (0 = newest) weighs decay^r")
    exact_below: int = Field(1000, ge=0, description="catalogs smaller than this use exact search")
    nlist: int = Field(0, ge=0, description="IVF k-means clusters; 0 = about sqrt(items)")
    nprobe: int = Field(16, ge=1, description="clusters probed per query (C of §3.5)")


class MethodsConfig(_Section):
    ease: EaseConfig = Field(default_factory=EaseConfig)
    pdn: PDNConfig = Field(default_factory=PDNConfig)
    mtmh: MTMHConfig = Field(default_factory=MTMHConfig)


class AugmentConfig(_Section):
    """LLM-I2I augmentation (llm-i2i.txt): generator + discriminator before Swing. CPU-sized defaults."""

    behaviors: list[str] = Field(default_factory=lambda: list(BEHAVIORS), min_length=1,
                                 description="real event behaviours that form the users' item sequences")
    dedup_consecutive: bool = Field(True, description="collapse back-to-back repeats of the same item")
    tail_fraction: float = Field(0.2, gt=0, lt=1, description="long tail = this share of the clicked items, "
                                 "least clicked first (paper: bottom 20%)")
    alpha: float = Field(4.0, ge=0, description="Eq. 2 loss weight when the next item is long-tail (paper: 4)")
    beta: float = Field(1.0, ge=0, description="Eq. 2 loss weight otherwise (paper: 1)")
    max_len: int = Field(32, ge=2, description="items per generator training window")
    context_len: int = Field(10, ge=1, description="recent items fed to generation and discrimination (paper: 10)")
    n_embd: int = Field(64, ge=8)
    n_layer: int = Field(2, ge=1)
    n_head: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(4, ge=1, description="generator epochs")
    batch_size: int = Field(32, ge=1, description="generator windows per step (discriminator: 4x as many pairs)")
    lr: float = Field(5e-3, gt=0)
    candidates_per_user: int = Field(10, ge=1, description="N items sampled per user by the generator")
    top_k: int = Field(50, ge=0, description="top-k sampling; 0 = off")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass; 1 = off")
    temperature: float = Field(1.0, gt=0)
    disc_epochs: int = Field(2, ge=1)
    disc_positions: int = Field(4, ge=1, description="held-back real next items per user for the discriminator")
    disc_negatives: int = Field(1, ge=1, description="sampled negatives per positive")
    negative_sampling: Literal["popularity", "uniform"] = Field(
        "popularity", description="popularity-proportional negatives keep the filter from penalising the tail")
    tau: float | None = Field(None, ge=0, le=1, description="keep candidates with confidence >= tau; None = the "
                              "smallest tau reaching target_precision on the validation split")
    target_precision: float = Field(0.95, gt=0, le=1, description="validation precision τ must reach (1:1 "
                                    "positives:negatives); measured on demo, 0.9 let enough noise in to cost "
                                    "overall HR")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="users whose last item is held back for validation")
    max_users: int = Field(0, ge=0, description="augment a seeded sample of users; 0 = all")
    generator: str | None = Field(None, description="local pretrained checkpoint to fine-tune; None = from scratch")
    seed: int = 0

    _known_behaviors = field_validator("behaviors")(_check_behaviors)


class PipelineConfig(_Section):
    augment: bool = Field(False, description="run LLM-I2I augmentation before Swing in the daily pipeline")
    methods: list[Literal["pi2i", "pdn", "mtmh"]] = Field(default=["pi2i"], min_length=1,
                               description="trained methods the daily pipeline trains in parallel and evaluates")


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    swing: SwingConfig = Field(default_factory=SwingConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    methods: MethodsConfig = Field(default_factory=MethodsConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)


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

