"""The one configuration object of the project.

Read once (defaults < optional TOML file < ``RECSYS_*`` environment variables) and passed
down to every command, job and server wrapper. Nothing else in the project reads the
environment for settings.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.index_types import GPU_INDEXES, INDEX_DEFAULTS, MILVUS_MAX_LIMIT, check_gpu_limits, check_gpu_params

PROJECT_ROOT = Path(__file__).resolve().parent.parent
@dataclass
class DataConfig:
    """Where the click log comes from and how big the synthetic one is."""

    source: str = "movielens"  # "movielens", "synthetic", "yoochoose" or "files"
    yoochoose_path: str = ""  # path to a real yoochoose-clicks.dat when source == "yoochoose"
    # source == "files": your data (CSV or parquet), see README "Bring your own data".
    interactions_path: str = ""
    users_path: str = ""
    items_path: str = ""
    schema_path: str = ""
    test_interactions_path: str = ""  # a held-out file instead of an internal split
    # "auto": last click per user for click logs, "random" otherwise; or "random",
    # "chronological", "last".
    split: str = "auto"
    test_fraction: float = 0.25
    split_seed: int = 42
    max_users: int = 0  # > 0: a reduced run on that many users drawn at random
    num_sessions: int = 200_000
    num_items: int = 20_000
    num_categories: int = 12
    mean_session_length: float = 5.0
    seed: int = 7


@dataclass
class TrainingConfig:
    """Model sizes and training budget (CPU sized)."""

    embedding_dim: int = 64
    tower_layers: tuple[int, ...] = (64,)
    ranking_top_layers: tuple[int, ...] = (128, 64)
    # The ranker's negatives per training interaction, the share drawn from the user's own
    # Two-Tower candidates (the rest uniform), and the share of history items hidden from it in
    # each training step.
    ranking_negatives: int = 31
    hard_negative_share: float = 0.5
    history_dropout: float = 0.0
    # With ``validate``, epochs are upper bounds and early stopping on a validation split
    # chooses them (and the retrieval weight); without, they are used as given.
    retrieval_epochs: int = 12
    ranking_epochs: int = 6
    validate: bool = True
    patience: int = 2
    validation_users: int = 2000
    retrieval_weight: float = 0.5
    # The user's most recent items kept as `history` (excluded from recommendations, input
    # of the ranker).
    max_history: int = 1000
    batch_size: int = 512
    learning_rate: float = 0.003
    logits_temperature: float = 1.0
    seed: int = 7
    # Progress bars of training epochs, tuning and index inserts, on a terminal only
    # (`--no-progress` turns them off); the one-line summary of each stage is always printed.
    progress: bool = True


@dataclass
class MilvusConfig:
    """How to reach Milvus and how the item index is built and searched."""

    uri: str = ""  # empty: the local server the project starts, at host:port
    # "user:password" (or an API key). Set it through RECSYS_MILVUS_TOKEN or a file
    # (token_file, RECSYS_MILVUS_TOKEN_FILE); never written to exported files or logs.
    token: str = field(default="", repr=False)
    token_file: str = ""
    collection: str = "recsys_items"
    index_type: str = "HNSW"
    index_params: dict[str, Any] = field(default_factory=lambda: {"M": 16, "efConstruction": 200})
    search_params: dict[str, Any] = field(default_factory=lambda: {"ef": 200})
    insert_chunk_size: int = 5_000
    timeout_s: float = 5.0
    # Local server started by `recsys serve` / the demo / the tests.
    host: str = "127.0.0.1"
    port: int = 19530
    # Run it in a network namespace of its own, so that only host:port is reachable (Milvus
    # 2.3 otherwise opens about ten ports on every interface).
    private_network: bool = True
    # Enable its authentication; `token` must then be "root:<password>" (the password is set
    # on first start, replacing Milvus' default).
    auth: bool = False

    @property
    def endpoint(self) -> str:
        """The URI clients connect to (a remote Milvus, a cluster, or the local server)."""
        return self.uri or f"http://{self.host}:{self.port}"

    @property
    def search_limit_cap(self) -> int:
        """The largest top-k a search may ask for with this index type."""
        gpu = GPU_INDEXES.get(self.index_type.upper())
        return gpu[2] if gpu else MILVUS_MAX_LIMIT

    def __post_init__(self) -> None:
        if self.token_file and not self.token:
            try:
                self.token = Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise ValueError(f"milvus.token_file {self.token_file}: {exc.strerror}") from None
        if self.auth and not self.token.startswith("root:"):
            raise ValueError("milvus.auth needs milvus.token = 'root:<password>' (RECSYS_MILVUS_TOKEN "
                             "or milvus.token_file)")
        gpu = GPU_INDEXES.get(self.index_type.upper())
        if gpu is not None:
            check_gpu_params(self.index_type.upper(), dict(self.index_params),
                              dict(self.search_params), *gpu[:2])


@dataclass
class TritonConfig:
    """Where the local Triton server listens."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    startup_timeout_s: float = 180.0
    # Triton's administrative APIs (model repository and configuration, shared memory,
    # statistics, trace, logging) answer only requests carrying the header
    # `recsys-admin-key: <admin_key>`; inference, metadata and health stay open. Without a
    # key (RECSYS_TRITON_ADMIN_KEY or admin_key_file) a random one is made per start and written
    # to <workdir>/triton/admin-key (mode 0600).
    admin_key: str = field(default="", repr=False)
    admin_key_file: str = ""
    # Where clients (`recsys recommend`, RecommenderClient users) send requests: several
    # "host:port" Triton endpoints (replicas serving the same model repository) are used in
    # round robin, skipping one that does not answer. Empty: the local server above.
    http_endpoints: tuple[str, ...] = ()
    grpc_endpoints: tuple[str, ...] = ()
    # The HTTP port is served by a checking front (recsys/runtime/http_guard.py) that refuses requests
    # whose declared shapes would crash tritonserver 2.51 (README, Security) and forwards the
    # rest to Triton on a private loopback port; false: Triton serves http_port itself.
    http_guard: bool = True
    max_request_bytes: int = 16 * 1024 * 1024
    # How long the guard holds a request while Triton cannot be reached (restarting), then 503.
    http_guard_wait_s: float = 30.0

    def client_endpoints(self, protocol: str) -> list[str]:
        """The ``host:port`` endpoints a client of ``protocol`` (http/grpc) sends requests to."""
        configured = self.grpc_endpoints if protocol == "grpc" else self.http_endpoints
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return list(configured) or [f"{self.host}:{port}"]


@dataclass
class SupervisorConfig:
    """How ``recsys serve`` keeps its servers running: a server that exits is started again
    after ``backoff_s`` (doubling per recent exit, at most ``max_backoff_s``); more than
    ``max_restarts`` exits within ``window_s`` and ``serve`` gives up (exit status 1) so that
    an outer supervisor (systemd, Kubernetes) takes over."""

    max_restarts: int = 10
    window_s: float = 600.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0


@dataclass
class ServingConfig:
    """The request contract of the `recommender` model, fixed at export."""

    model_name: str = "recommender"
    similar_model_name: str = "similar_items"
    events_model_name: str = "events"
    top_k: int = 10
    retrieval_k: int = 100
    max_batch_users: int = 1024
    # Items the user already interacted with (Feast's `history`) are never recommended.
    exclude_seen: bool = True
    # Feature rows read from the Feast online store are reused for this long (0: always read).
    feature_cache_ttl_s: float = 60.0
    # The release an exported model belongs to (set by the export, recsys.jobs.releases; 0: none).
    release: int = 0


@dataclass
class ReleaseConfig:
    """Releases (``recsys release``, the pipeline): the quality gate and how many are kept."""

    # A rollout is refused when the new release's NDCG@10, Recall@10 or HitRate@10 on its
    # build's validation split is below the serving release's by more than this share of it
    # (0.1: 10%); `--force` overrides. Rolling back is never gated. Two builds on nearly the
    # same data differed by up to 7% on 300 validation users: keep it above that noise.
    max_regression: float = 0.10
    keep: int = 3  # releases kept by a prune (the serving and the previous one always)


@dataclass
class PipelineConfig:
    """The daily pipeline (``recsys pipeline``): import -> train -> export -> gate -> features ->
    roll out -> batch -> prune."""

    inbox: str = ""  # where new interaction files are dropped; empty: <workdir>/inbox
    batch_db: str = ""  # the batch table refreshed after a rollout (SQLAlchemy URL); empty: no batch step
    batch_k: int = 50
    keep_runs: int = 3  # complete batch runs kept in batch_db


@dataclass
class Config:
    """Everything the project needs to know, in one object."""

    workdir: Path = PROJECT_ROOT / "artifacts"
    feature_repo: Path = PROJECT_ROOT / "feature_repo"
    # Which Feast configuration of that repo is used (relative to it): feature_store.yaml
    # (online store in a local SQLite file) or feature_store.redis.yaml (Redis at
    # $FEAST_REDIS_CONNECTION_STRING), or a file of one's own.
    feature_store_yaml: str = "feature_store.yaml"
    # A Dask distributed scheduler (host:port): NVTabular preprocessing and the batch job run
    # on its workers. Empty: everything in this process.
    dask_scheduler: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    # Derived locations of the offline artifacts; one direction: training -> serving.
    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def models_dir(self) -> Path:
        return self.workdir / "models"

    @property
    def workflows_dir(self) -> Path:
        return self.workdir / "workflows"

    @property
    def model_repository(self) -> Path:
        return self.workdir / "model_repository"

    @property
    def imported_dir(self) -> Path:
        """Interactions imported after the configured data (the pipeline's inbox); every build
        reads them with it (:mod:`training.imported`)."""
        return self.workdir / "imported"

    @property
    def events_dir(self) -> Path:
        """Events the ``events`` model accepted, one CSV per day; every build reads them. Beside
        the Feast data (writable by the serving side, which may mount the work directory
        read-only)."""
        return self.feature_data_dir / "events"

    @property
    def inbox_dir(self) -> Path:
        return Path(self.pipeline.inbox).expanduser().resolve() if self.pipeline.inbox else self.workdir / "inbox"

    @property
    def milvus_data_dir(self) -> Path:
        return self.workdir / "milvus"

    @property
    def feature_data_dir(self) -> Path:
        """Offline source of the Feast repo (parquet written by training)."""
        return self.feature_repo / "data"

    @property
    def feature_store_file(self) -> Path:
        """The Feast configuration file in use (``feature_store_yaml`` within the repo)."""
        return self.feature_repo / self.feature_store_yaml

    def open_feature_store(self):
        """A Feast ``FeatureStore`` of the repo, configured by :attr:`feature_store_file`."""
        from feast import FeatureStore

        return FeatureStore(repo_path=str(self.feature_repo), fs_yaml_file=self.feature_store_file)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def __post_init__(self) -> None:
        check_gpu_limits(self)


_ENV_OVERRIDES = {
    "RECSYS_WORKDIR": ("workdir",),
    "RECSYS_FEATURE_REPO": ("feature_repo",),
    "RECSYS_FEATURE_STORE_YAML": ("feature_store_yaml",),
    "RECSYS_DASK_SCHEDULER": ("dask_scheduler",),
    "RECSYS_MILVUS_URI": ("milvus", "uri"),
    "RECSYS_MILVUS_TOKEN": ("milvus", "token"),
    "RECSYS_MILVUS_TOKEN_FILE": ("milvus", "token_file"),
    "RECSYS_TRITON_ADMIN_KEY": ("triton", "admin_key"),
    "RECSYS_MILVUS_COLLECTION": ("milvus", "collection"),
    "RECSYS_MILVUS_INDEX_TYPE": ("milvus", "index_type"),
    "RECSYS_MILVUS_INDEX_PARAMS": ("milvus", "index_params"),  # JSON object
    "RECSYS_MILVUS_SEARCH_PARAMS": ("milvus", "search_params"),  # JSON object
    "RECSYS_TRITON_HOST": ("triton", "host"),
    "RECSYS_TRITON_HTTP_ENDPOINTS": ("triton", "http_endpoints"),  # comma-separated host:port
    "RECSYS_TRITON_GRPC_ENDPOINTS": ("triton", "grpc_endpoints"),
    "RECSYS_PIPELINE_INBOX": ("pipeline", "inbox"),
    "RECSYS_PIPELINE_BATCH_DB": ("pipeline", "batch_db"),  # may hold a password: a Secret
}
_JSON_ENV = {"RECSYS_MILVUS_INDEX_PARAMS", "RECSYS_MILVUS_SEARCH_PARAMS"}


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None, base: dict[str, Any] | None = None) -> Config:
    """Build the configuration: defaults, then ``base`` values or a TOML file (``path``, or
    ``./recsys.toml`` if present), then ``RECSYS_*`` variables, then explicit ``overrides``
    (nested dicts, as in the TOML file)."""
    values: dict[str, Any] = json.loads(json.dumps(base)) if base else {}
    if path is None and base is None and Path("recsys.toml").is_file():
        path = "recsys.toml"
    if path is not None:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    environ = os.environ if environ is None else environ
    from_env: dict[str, Any] = {}
    for var, keys in _ENV_OVERRIDES.items():
        if environ.get(var):
            _set_nested(from_env, keys, _json_object(var, environ[var]) if var in _JSON_ENV else environ[var])
    for layer in (from_env, overrides or {}):
        _drop_stale_index_params(values, layer)
        for key, value in layer.items():
            if isinstance(value, dict):
                values.setdefault(key, {}).update(value)
            else:
                values[key] = value
    milvus = values.get("milvus", {})
    defaults = INDEX_DEFAULTS.get(str(milvus.get("index_type", "")).upper())
    if defaults:
        milvus.setdefault("index_params", dict(defaults[0]))
        milvus.setdefault("search_params", dict(defaults[1]))
    return _build(Config, values)


def _json_object(var: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{var} must be a JSON object, e.g. '{{\"nprobe\": 32}}': {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{var} must be a JSON object, got {text!r}")
    return value


def _drop_stale_index_params(values: dict, layer: dict) -> None:
    """When a later layer changes the index type without giving its parameters, the earlier
    layer's parameters (made for the other type) are dropped; the new type's defaults apply."""
    new = (layer.get("milvus") or {}).get("index_type")
    milvus = values.get("milvus")
    if new is None or milvus is None:
        return
    if str(new).upper() != str(milvus.get("index_type", "HNSW")).upper():
        for key in ("index_params", "search_params"):
            if key not in layer["milvus"]:
                milvus.pop(key, None)


def _set_nested(values: dict, keys: tuple[str, ...], value: Any) -> None:
    for key in keys[:-1]:
        values = values.setdefault(key, {})
    values[keys[-1]] = value


def _build(cls, values: dict[str, Any]):
    kwargs = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown configuration key {key!r} in section {cls.__name__}")
        fld = known[key]
        default = getattr(cls(), key) if fld.default is dataclasses.MISSING else fld.default
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value)
        elif isinstance(default, Path):
            value = Path(value).expanduser().resolve()
        elif isinstance(default, tuple):
            value = tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else tuple(value)
        elif isinstance(default, bool):
            value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)) and not isinstance(value, dict):
            value = type(default)(value)
        kwargs[key] = value
    return cls(**kwargs)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
