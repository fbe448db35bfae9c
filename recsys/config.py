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


@dataclass
class MilvusConfig:
    """How to reach Milvus and how the item index is built and searched."""

    uri: str = ""  # empty: the local server the project starts, at host:port
    token: str = ""
    collection: str = "recsys_items"
    index_type: str = "HNSW"
    index_params: dict[str, Any] = field(default_factory=lambda: {"M": 16, "efConstruction": 200})
    search_params: dict[str, Any] = field(default_factory=lambda: {"ef": 200})
    insert_chunk_size: int = 5_000
    timeout_s: float = 5.0
    # Local server started by `recsys serve` / the demo / the tests.
    host: str = "127.0.0.1"
    port: int = 19530

    @property
    def endpoint(self) -> str:
        """The URI clients connect to (a remote Milvus, a cluster, or the local server)."""
        return self.uri or f"http://{self.host}:{self.port}"


@dataclass
class TritonConfig:
    """Where the local Triton server listens."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    startup_timeout_s: float = 180.0


@dataclass
class ServingConfig:
    """The request contract of the `recommender` model, fixed at export."""

    model_name: str = "recommender"
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
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    triton: TritonConfig = field(default_factory=TritonConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)

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

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


_ENV_OVERRIDES = {
    "RECSYS_WORKDIR": ("workdir",),
    "RECSYS_FEATURE_REPO": ("feature_repo",),
    "RECSYS_MILVUS_URI": ("milvus", "uri"),
    "RECSYS_MILVUS_TOKEN": ("milvus", "token"),
    "RECSYS_MILVUS_COLLECTION": ("milvus", "collection"),
    "RECSYS_MILVUS_INDEX_TYPE": ("milvus", "index_type"),
    "RECSYS_TRITON_HOST": ("triton", "host"),
}


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
    for var, keys in _ENV_OVERRIDES.items():
        if environ.get(var):
            _set_nested(values, keys, environ[var])
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    return _build(Config, values)


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
            value = tuple(value)
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
