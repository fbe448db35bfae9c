"""The SQL side of batch recommendations: two tables and a view, through SQLAlchemy (SQLite by
default, PostgreSQL or any database SQLAlchemy reaches by URL).

    recommendation_runs   one row per run: run_id, status (running | complete | failed),
                          started_at, finished_at (UTC), k, parameters (JSON), model_version,
                          users_total, users_done, rows, users_per_second, worker, error
    recommendations       run_id, user_id, rank (1..k), item_id, score, source, generated_at;
                          primary key (run_id, user_id, rank), index on user_id
    current_recommendations   view: the rows of the latest complete run

Readers never see a run in progress: a run's rows are written in chunks (one transaction per
chunk, so a user is either fully written or not at all) while its status is ``running``, and
its status flips to ``complete`` in one transaction at the end; the view selects the latest
complete run, so until that flip readers keep seeing the previous one. After a run completes,
complete runs beyond the newest ``keep`` are deleted (:meth:`BatchStore.prune`).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

RUNNING, COMPLETE, FAILED = "running", "complete", "failed"
VIEW = "current_recommendations"
EXAMPLE_URLS = "sqlite:///recs.db or postgresql://user:password@host:5432/dbname"

metadata = sa.MetaData()

runs = sa.Table(
    "recommendation_runs", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("users_total", sa.Integer, nullable=False),
    sa.Column("users_done", sa.Integer, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("users_per_second", sa.Float),
    sa.Column("worker", sa.String(255)),  # host:pid of the process that last ran it
    sa.Column("error", sa.Text),
    sa.CheckConstraint(f"status IN ('{RUNNING}', '{COMPLETE}', '{FAILED}')", name="ck_recommendation_runs_status"),
)

recommendations = sa.Table(
    "recommendations", metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("recommendation_runs.run_id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("rank", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("item_id", sa.BigInteger, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("generated_at", sa.DateTime, nullable=False),
    sa.Index("ix_recommendations_user_id", "user_id"),
)
COLUMNS = ("run_id", "user_id", "rank", "item_id", "score", "source", "generated_at")


class BatchStoreError(RuntimeError):
    """The database cannot be used (bad URL, unreachable server, unknown run...)."""


def utcnow() -> datetime:
    """Naive UTC timestamp (what the tables store)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def current_run_query() -> sa.sql.Select:
    """``SELECT run_id`` of the latest complete run (by finished_at)."""
    return (sa.select(runs.c.run_id).where(runs.c.status == COMPLETE)
            .order_by(runs.c.finished_at.desc(), runs.c.run_id.desc()).limit(1))


def current_view_select() -> sa.sql.Select:
    """What the ``current_recommendations`` view selects."""
    return (sa.select(recommendations.c.run_id, recommendations.c.user_id, recommendations.c.rank,
                      recommendations.c.item_id, recommendations.c.score, recommendations.c.source,
                      recommendations.c.generated_at)
            .where(recommendations.c.run_id == current_run_query().scalar_subquery()))


class BatchStore:
    """Runs and their recommendations in one database (``url``: an SQLAlchemy URL)."""

    def __init__(self, url: str, connect_timeout_s: int = 10):
        self.url = str(url)
        self.engine = _engine(self.url, connect_timeout_s)
        try:
            with self.engine.connect():
                pass
        except sa_exc.DBAPIError as exc:
            raise BatchStoreError(f"cannot connect to the database {safe_url(self.url)}: "
                                  f"{_brief(exc)}") from None

    # -- schema ---------------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create the tables, the index and the view where missing (idempotent)."""
        try:
            metadata.create_all(self.engine)
            if VIEW not in sa.inspect(self.engine).get_view_names():
                select = current_view_select().compile(self.engine, compile_kwargs={"literal_binds": True})
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(f"CREATE VIEW {VIEW} AS {select}")
        except sa_exc.DBAPIError as exc:
            raise BatchStoreError(f"cannot create the batch tables in {safe_url(self.url)}: "
                                  f"{_brief(exc)}") from None

    # -- runs -----------------------------------------------------------------------------
    def start_run(self, run_id: str, k: int, parameters: dict, model_version: str, users_total: int,
                  worker: str = "") -> dict:
        """Insert a new run with status ``running``; returns its row."""
        row = {"run_id": run_id, "status": RUNNING, "started_at": utcnow(), "finished_at": None,
               "k": int(k), "parameters": parameters, "model_version": model_version,
               "users_total": int(users_total), "users_done": 0, "rows": 0, "users_per_second": None,
               "worker": worker, "error": None}
        with self.engine.begin() as conn:
            conn.execute(runs.insert(), row)
        return row

    def get_run(self, run_id: str) -> dict | None:
        """The run's row as a dict, or ``None`` if there is no such run."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).mappings().first()
        return dict(row) if row else None

    def list_runs(self) -> list[dict]:
        """Every run, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.started_at.desc(), runs.c.run_id.desc()))
            return [dict(row) for row in rows.mappings()]

    def reopen_run(self, run_id: str, worker: str = "") -> dict:
        """Mark an interrupted or failed run ``running`` again, with ``users_done`` and ``rows``
        recounted from what is actually stored; returns its row."""
        with self.engine.begin() as conn:
            users, rows = conn.execute(
                sa.select(sa.func.count(sa.distinct(recommendations.c.user_id)), sa.func.count())
                .where(recommendations.c.run_id == run_id)).one()
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(
                status=RUNNING, users_done=int(users), rows=int(rows), worker=worker, error=None,
                finished_at=None))
        return self.get_run(run_id)

    def done_users(self, run_id: str) -> set[int]:
        """Users of the run whose recommendations are stored (always complete: a chunk is
        written in one transaction)."""
        with self.engine.connect() as conn:
            result = conn.execute(sa.select(recommendations.c.user_id).distinct()
                                  .where(recommendations.c.run_id == run_id))
            return {int(user) for (user,) in result}

    def write_chunk(self, run_id: str, user_ids, item_ids, scores, sources,
                    generated_at: datetime | None = None) -> int:
        """Store the lists of a chunk of users and count them in the run, in one transaction.
        ``item_ids`` / ``scores`` are ``[users, k]`` (sorted; rank = column + 1, id -1 = no
        item), ``sources`` ``[users]``. Returns the number of rows written."""
        rows = chunk_rows(run_id, user_ids, item_ids, scores, sources, generated_at or utcnow())
        with self.engine.begin() as conn:
            if rows:
                self._insert(conn, rows)
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(
                users_done=runs.c.users_done + len(user_ids), rows=runs.c.rows + len(rows)))
        return len(rows)

    def _insert(self, conn, rows: list[tuple]) -> None:
        dialect = self.engine.dialect
        if dialect.paramstyle == "qmark":
            # SQLite: the driver's executemany with values converted once per chunk is ~3x
            # faster than SQLAlchemy's per-row parameter processing.
            compiled = recommendations.insert().compile(dialect=dialect)
            to_db = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
            stamp = rows[0][-1]
            stamp = to_db(stamp) if to_db else stamp
            conn.exec_driver_sql(str(compiled), [row[:-1] + (stamp,) for row in rows])
        else:  # e.g. psycopg2: SQLAlchemy batches the rows (execute_values)
            conn.execute(recommendations.insert(), [dict(zip(COLUMNS, row)) for row in rows])

    def source_counts(self, run_id: str) -> dict[str, int]:
        """Users of the run per answering path (``source``)."""
        r = recommendations.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(r.source, sa.func.count(sa.distinct(r.user_id)))
                                .where(r.run_id == run_id).group_by(r.source))
            return {source: int(count) for source, count in rows}

    def complete_run(self, run_id: str, users_per_second: float | None = None) -> None:
        """Flip the run to ``complete`` (one transaction): from now on readers see it."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(
                status=COMPLETE, finished_at=utcnow(), users_per_second=users_per_second, error=None))

    def fail_run(self, run_id: str, error: str, users_per_second: float | None = None) -> None:
        """Mark the run ``failed`` (its rows stay; ``--resume`` continues it)."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(
                status=FAILED, finished_at=utcnow(), error=str(error)[:2000],
                users_per_second=users_per_second))

    def prune(self, keep: int) -> list[str]:
        """Delete complete runs (and their rows) beyond the ``keep`` newest; returns their ids.
        Running and failed runs are left alone (they can be resumed)."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (the current run), got {keep}")
        with self.engine.begin() as conn:
            complete = [run for (run,) in conn.execute(
                sa.select(runs.c.run_id).where(runs.c.status == COMPLETE)
                .order_by(runs.c.finished_at.desc(), runs.c.run_id.desc()))]
            old = complete[keep:]
            if old:
                conn.execute(recommendations.delete().where(recommendations.c.run_id.in_(old)))
                conn.execute(runs.delete().where(runs.c.run_id.in_(old)))
        return old

    # -- readers --------------------------------------------------------------------------
    def current_run(self) -> dict | None:
        """The run readers see (the latest complete one), or ``None``."""
        with self.engine.connect() as conn:
            run_id = conn.execute(current_run_query()).scalar()
        return self.get_run(run_id) if run_id else None

    def current_recommendations(self, user_id: int) -> list[dict]:
        """A user's current list (from the ``current_recommendations`` view), by rank:
        ``[{"rank", "item_id", "score", "source", "run_id", "generated_at"}, ...]``; empty if the
        user is not in the current run."""
        view = sa.table(VIEW, *(sa.column(column.name, column.type) for column in recommendations.columns))
        query = (sa.select(view.c.rank, view.c.item_id, view.c.score, view.c.source, view.c.run_id,
                           view.c.generated_at)
                 .where(view.c.user_id == int(user_id)).order_by(view.c.rank))
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def run_rows(self, run_id: str) -> list[tuple]:
        """Every ``(user_id, rank, item_id, score, source)`` of a run, ordered by user and rank."""
        r = recommendations.c
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(
                sa.select(r.user_id, r.rank, r.item_id, r.score, r.source)
                .where(r.run_id == run_id).order_by(r.user_id, r.rank))]

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()


def current_recommendations(url: str, user_id: int) -> list[dict]:
    """A user's current list in the database at ``url`` (see
    :meth:`BatchStore.current_recommendations`)."""
    store = BatchStore(url)
    try:
        return store.current_recommendations(user_id)
    finally:
        store.close()


def chunk_rows(run_id: str, user_ids, item_ids, scores, sources, generated_at: datetime) -> list[tuple]:
    """The ``recommendations`` rows of a chunk as tuples in :data:`COLUMNS` order (entries with
    item id -1 are left out)."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    users = np.asarray(user_ids, dtype=np.int64)
    if item_ids.ndim != 2 or len(users) != len(item_ids) or len(sources) != len(item_ids) \
            or scores.shape != item_ids.shape:
        raise ValueError(f"chunk shapes disagree: {len(users)} users, item_ids {item_ids.shape}, "
                         f"scores {scores.shape}, {len(sources)} sources")
    n, k = item_ids.shape
    keep = item_ids != -1
    rows_of = np.repeat(np.arange(n), k).reshape(n, k)[keep]
    ranks = np.tile(np.arange(1, k + 1), n).reshape(n, k)[keep]
    source = [s.decode() if isinstance(s, bytes) else str(s) for s in sources]
    return [(run_id, u, r, i, s, source[row], generated_at)
            for row, u, r, i, s in zip(rows_of.tolist(), users[rows_of].tolist(), ranks.tolist(),
                                       item_ids[keep].tolist(), scores[keep].tolist())]


def _engine(url: str, connect_timeout_s: int) -> sa.engine.Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa_exc.ArgumentError:
        raise BatchStoreError(f"malformed database URL {safe_url(url)!r}: expected e.g. {EXAMPLE_URLS}") from None
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"future": True}
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": int(connect_timeout_s)}
    elif backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except sa_exc.NoSuchModuleError:
        raise BatchStoreError(f"unsupported database URL scheme {parsed.drivername!r} in "
                              f"{safe_url(url)!r}: use e.g. {EXAMPLE_URLS}") from None
    except ImportError as exc:
        raise BatchStoreError(f"the database driver for {parsed.drivername!r} is not installed "
                              f"({exc.name or exc})") from None
    if backend == "sqlite" and (parsed.database or ":memory:") != ":memory:":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL: readers keep reading the last committed state while a chunk is being written."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _brief(exc: Exception) -> str:
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] or type(original).__name__
