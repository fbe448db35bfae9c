"""What a batch run is asked to do (``recsys batch`` options) and what it reports back; light,
so the command line can describe the options without loading the cascade."""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_K = 50
DEFAULT_CHUNK = 1024
DEFAULT_DB = "sqlite:///recs.db"
DEFAULT_KEEP = 3


@dataclass
class BatchOptions:
    """What one batch run computes and where it writes (``recsys batch`` options)."""

    k: int | None = None  # None: DEFAULT_K, or the resumed run's k
    db_url: str = DEFAULT_DB
    user_ids: list[int] | None = None  # None and no users_file: every user of the training data
    users_file: str | None = None
    chunk_size: int | None = None  # None: DEFAULT_CHUNK, or the resumed run's chunk size
    resume: str | None = None
    keep_runs: int = DEFAULT_KEEP
    pause_s: float = 0.0  # sleep after each chunk (leaves CPU to a co-located server)
    progress: bool = True
    workers: int = 1  # processes running the cascade (each loads its own copy); 1: in this process
    filter: str | None = None  # a filter expression (operators.filters), as online
    filter_values: dict | str | None = None  # its $PARAMETER values (dict or JSON object)


@dataclass
class BatchResult:
    """What a finished run did (printed by ``recsys batch``)."""

    run_id: str
    k: int
    users_total: int
    users_computed: int  # by this process (a resumed run skips the users written before)
    rows: int  # rows of the whole run
    sources: dict[str, int]  # users per answering path, whole run
    unknown_users: int  # requested ids the training data does not know (answered by the fallback)
    setup_s: float  # export, model load, Milvus
    compute_s: float  # the chunk loop: cascade + database writes (pauses excluded)
    users_per_second: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)
    model_version: str = ""
    release: int | None = None  # the release whose models computed the run (recsys.jobs.releases)
