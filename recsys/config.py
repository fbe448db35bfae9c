"""The one configuration object of the project.

Read once (defaults < optional TOML file < ``RECSYS_*`` environment variables) and passed
down to every command, job and server wrapper. Nothing else in the project reads the
environment for settings.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOG = logging.getLogger(__name__)

# Build and search parameters an index type gets when it is chosen without its own (e.g. only
# RECSYS_MILVUS_INDEX_TYPE is set): parameters of one type mean nothing to another. HNSW's are
# the defaults of MilvusConfig; the IVF ones are those of docs/benchmarks.md (nlist must not
# exceed the number of items). GPU_* types need a GPU build of Milvus (milvusdb/milvus:*-gpu).
INDEX_DEFAULTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_PQ": ({"nlist": 1024, "m": 16, "nbits": 8}, {"nprobe": 32}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 200}),
    "GPU_BRUTE_FORCE": ({}, {}),
    "GPU_IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "GPU_IVF_PQ": ({"nlist": 1024, "m": 16, "nbits": 8}, {"nprobe": 32}),
    # itopk_size left out: Milvus then sizes it to the search limit, which varies per request.
    "GPU_CAGRA": ({"intermediate_graph_degree": 64, "graph_degree": 32}, {}),
}

# GPU index types: the parameters Milvus 2.4 documents for them (build, search) and the largest
# top-k (search limit) it accepts. Where Milvus versions document different caps (GPU_IVF_FLAT:
# 256, later 2048) the smaller one is used.
GPU_INDEXES: dict[str, tuple[frozenset, frozenset, int]] = {
    "GPU_CAGRA": (frozenset({"intermediate_graph_degree", "graph_degree", "build_algo",
                             "cache_dataset_on_device", "adapt_for_cpu"}),
                  frozenset({"itopk_size", "search_width", "min_iterations", "max_iterations",
                             "team_size", "ef"}), 1024),
    "GPU_IVF_PQ": (frozenset({"nlist", "m", "nbits", "cache_dataset_on_device"}),
                   frozenset({"nprobe"}), 1024),
    "GPU_IVF_FLAT": (frozenset({"nlist", "cache_dataset_on_device"}), frozenset({"nprobe"}), 256),
    "GPU_BRUTE_FORCE": (frozenset(), frozenset(), 1024),
}
MILVUS_MAX_LIMIT = 16_384  # Milvus' own cap on top-k (QueryMilvus' default max_limit)


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
            _check_gpu_params(self.index_type.upper(), dict(self.index_params),
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
    # The HTTP port is served by a checking front (recsys/http_guard.py) that refuses requests
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
    top_k: int = 10
    retrieval_k: int = 100
    max_batch_users: int = 1024
    # Items the user already interacted with (Feast's `history`) are never recommended.
    exclude_seen: bool = True
    # Feature rows read from the Feast online store are reused for this long (0: always read).
    feature_cache_ttl_s: float = 60.0


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
        _check_gpu_limits(self)


def _positive_int(index_type: str, name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
        bounds = f"in [{low}, {high}]" if high else f">= {low}"
        raise ValueError(f"milvus: {index_type} parameter {name} must be an integer {bounds}, got {value!r}")
    return value


def _check_gpu_params(index_type: str, index_params: dict, search_params: dict,
                      build_keys: frozenset, search_keys: frozenset) -> None:
    """Reject parameters a GPU index does not take (e.g. HNSW's ``M`` left over) and values
    outside the ranges Milvus documents."""
    for kind, given, known in (("index_params", index_params, build_keys),
                               ("search_params", search_params, search_keys)):
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"milvus.{kind} {unknown} are not {index_type} parameters "
                             f"(it takes: {', '.join(sorted(known)) or 'none'})")
    if index_type == "GPU_CAGRA":
        inter = _positive_int(index_type, "intermediate_graph_degree",
                              index_params.get("intermediate_graph_degree", 128))
        graph = _positive_int(index_type, "graph_degree", index_params.get("graph_degree", 64))
        if graph >= inter:
            raise ValueError(f"milvus: GPU_CAGRA graph_degree ({graph}) must be smaller than "
                             f"intermediate_graph_degree ({inter})")
        algo = str(index_params.get("build_algo", "IVF_PQ")).upper()
        if algo not in ("IVF_PQ", "NN_DESCENT"):
            raise ValueError(f"milvus: GPU_CAGRA build_algo must be IVF_PQ or NN_DESCENT, got {algo!r}")
        for name in ("itopk_size", "search_width"):
            if name in search_params:
                _positive_int(index_type, name, search_params[name])
    elif index_type in ("GPU_IVF_PQ", "GPU_IVF_FLAT"):
        nlist = _positive_int(index_type, "nlist", index_params.get("nlist", 128), 1, 65536)
        if "nprobe" in search_params:
            _positive_int(index_type, "nprobe", search_params["nprobe"], 1, nlist)
        if index_type == "GPU_IVF_PQ":
            _positive_int(index_type, "nbits", index_params.get("nbits", 8), 1, 16)
            if "m" in index_params:
                _positive_int(index_type, "m", index_params["m"])


def _search_limit_cap(config: "Config") -> int:
    """The largest limit QueryMilvus can send: retrieval_k plus the user's history (excluded
    items), rounded up to a power of two, at most Milvus' own cap."""
    needed = config.serving.retrieval_k + (config.training.max_history if config.serving.exclude_seen else 0)
    return min(1 << max(needed - 1, 1).bit_length(), MILVUS_MAX_LIMIT)


def _check_gpu_limits(config: "Config") -> None:
    """The checks of a GPU index that involve other sections: top-k caps, the embedding size."""
    index_type = config.milvus.index_type.upper()
    if index_type not in GPU_INDEXES:
        return
    cap = GPU_INDEXES[index_type][2]
    retrieval_k = config.serving.retrieval_k
    if retrieval_k > cap:
        raise ValueError(f"serving.retrieval_k = {retrieval_k} exceeds the top-k limit of "
                         f"{index_type} ({cap}); lower it or use a CPU index type")
    search = config.milvus.search_params
    if index_type == "GPU_CAGRA" and "itopk_size" in search:
        # Milvus: top-k <= max(ceil(itopk_size / 32), search_width) * 32, and itopk_size >= top-k.
        itopk = int(search["itopk_size"])
        if itopk < retrieval_k:
            raise ValueError(f"milvus.search_params.itopk_size = {itopk} must be >= serving.retrieval_k "
                             f"({retrieval_k}); leave it out to let Milvus size it to each search")
    m = config.milvus.index_params.get("m")
    if index_type == "GPU_IVF_PQ" and m and config.training.embedding_dim % int(m):
        raise ValueError(f"milvus.index_params.m = {m} must divide training.embedding_dim "
                         f"({config.training.embedding_dim})")
    worst = _search_limit_cap(config)
    if worst > cap:
        LOG.warning("%s caps top-k at %d, but a user with %d history items would need a search "
                    "limit of %d (retrieval_k + history, rounded up to a power of two): retrieval "
                    "is capped at %d, so such users get fewer new candidates (the rest filled "
                    "with popular items); keep retrieval_k + training.max_history <= %d to avoid it",
                    index_type, cap, config.training.max_history, worst, cap, cap)


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
