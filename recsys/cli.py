"""``recsys``: the project's command line.

    recsys demo                 build everything, serve, query, stop (the README's first command)
    recsys evaluate             train, Feast, index, then offline metrics of every stage
    recsys build                train + Feast + export (no servers)
    recsys serve                Milvus + Triton in the foreground until Ctrl-C / SIGTERM
    recsys recommend 17 42      ask a running server (``--grpc`` for gRPC)
    recsys similar 50 100       items similar to these (the similar_items model)
    recsys status               health of Triton, Milvus and Feast (non-zero exit if unhealthy)
    recsys catalog count|upsert FILE|delete ID..|rebuild|which|drop|journal    live catalogue operations
    recsys batch --k 50 --db sqlite:///recs.db    top-K of every user into a database
    recsys release list|rollout [--force]|rollback|prune    releases, the quality gate
    recsys pipeline             the daily job: import new files, train, gate, roll out, batch, prune
    recsys events push FILE     interactions (CSV / JSON lines, - for stdin) to the running events model
    recsys train | features | index | export    single steps
"""
from __future__ import annotations

import argparse
import logging
import sys

from core.config import Config, load_config
from recsys.jobs.batch_options import DEFAULT_CHUNK, DEFAULT_DB, DEFAULT_K, DEFAULT_KEEP, BatchOptions

URL_HELP = ("host:port, or several Triton replicas separated by commas (used in round robin); "
            "default: triton.http_endpoints / grpc_endpoints, else the local Triton")


# Accepted before and after the command (``recsys --workdir W build`` = ``recsys build --workdir W``).
COMMON_OPTIONS = ((("--config",), {}), (("--workdir",), {}), (("--feature-repo",), {}),
                  (("-v", "--verbose"), {"action": "store_true"}),
                  (("--no-progress",), {"action": "store_true"}))


def _commands(subparsers):
    """Every command's parser, nested ones (``catalog count``) included."""
    for command in subparsers.choices.values():
        yield command
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from _commands(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = {"--config": "TOML configuration file (default: ./recsys.toml if present)",
             "--workdir": "where artifacts, the model repository and server data go",
             "--feature-repo": "the Feast repository (default ./feature_repo; one per work directory)",
             "-v": "more log lines (and the libraries' warnings)",
             "--no-progress": "no progress bars (they show only on a terminal anyway)"}
    for flags, extra in COMMON_OPTIONS:
        parser.add_argument(*flags, help=helps[flags[0]], **extra)
    sub = parser.add_subparsers(dest="command", required=True)

    data = argparse.ArgumentParser(add_help=False)
    group = data.add_argument_group("data (default: from the configuration)")
    group.add_argument("--data", choices=["synthetic", "movielens", "yoochoose", "files"],
                       help="data source")
    group.add_argument("--interactions", help="interactions file (CSV/parquet), implies --data files")
    group.add_argument("--users", help="users file (optional)")
    group.add_argument("--items-file", help="items file (optional)")
    group.add_argument("--schema", help="schema file declaring column kinds (JSON or TOML)")
    group.add_argument("--test-interactions", help="held-out interactions instead of a split")
    group.add_argument("--split", choices=["auto", "random", "chronological", "last", "sessions"],
                       help="sessions: hold out whole users (sessions), evaluated from their clicks")
    group.add_argument("--max-users", type=int, help="a reduced run on that many users")
    group.add_argument("--sessions", type=int, help="synthetic sessions (users)")
    group.add_argument("--items", type=int, help="synthetic catalogue size")

    dask = argparse.ArgumentParser(add_help=False)
    dask.add_argument("--dask-scheduler", metavar="ADDRESS",
                      help="run NVTabular preprocessing (train) or the batch job on the Dask cluster "
                           "of this scheduler, e.g. tcp://10.0.0.5:8786 (default: dask_scheduler of "
                           "the configuration, RECSYS_DASK_SCHEDULER; empty: this process)")

    demo = sub.add_parser("demo", parents=[data, dask], help="build, serve, query over HTTP and gRPC, stop")
    demo.add_argument("--requests", type=int, default=300, help="requests per latency measurement")
    demo.add_argument("--port-offset", type=int, default=0,
                      help="add to every server port (to run beside another stack)")

    sub.add_parser("build", parents=[data, dask], help="train on every interaction (a production build), "
                                                      "apply + materialize Feast, export")
    sub.add_parser("train", parents=[data, dask], help="the offline job on every interaction: data, "
                                                      "workflows, models")
    evaluate = sub.add_parser("evaluate", parents=[data, dask],
                              help="train, Feast, index; metrics of popularity, Two-Tower (exact, "
                                   "Milvus) and the served cascade")
    evaluate.add_argument("--no-train", action="store_true", help="evaluate the existing artifacts")
    evaluate.add_argument("--eval-users", type=int, help="evaluate a random sample of test users")
    evaluate.add_argument("--port-offset", type=int, default=0)
    sub.add_parser("features", help="feast apply + materialize-incremental")
    sub.add_parser("index", help="load item vectors into the Milvus at milvus.uri")
    sub.add_parser("export", help="write the Triton model repository")

    serve = sub.add_parser("serve", help="run Milvus and Triton in the foreground")
    serve.add_argument("--reindex", action="store_true", help="rebuild the Milvus collection first")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")

    catalog = sub.add_parser("catalog", help="live catalogue operations on Milvus + Feast")
    action = catalog.add_subparsers(dest="action", required=True)
    action.add_parser("count", help="items in the served collection")
    upsert = action.add_parser("upsert", help="add or update items (vectors from the item tower)")
    upsert.add_argument("items_file", help="CSV or parquet: item_id + the item feature columns")
    upsert.add_argument("--vectors", help="parquet with item_id and embedding, instead of the item tower")
    delete = action.add_parser("delete", help="remove items from the collection")
    delete.add_argument("item_ids", nargs="+", type=int)
    action.add_parser("rebuild", help="new collection from the trained vectors, then switch the alias")
    action.add_parser("which", help="the collection the alias points at")
    drop = action.add_parser("drop", help="drop the alias and its collection (serving fails until rebuild)")
    drop.add_argument("--yes", action="store_true", help="really drop")
    journal = action.add_parser("journal", help="catalogue edits carried into every later release")
    journal.add_argument("--clear", action="store_true",
                         help="forget them (once the items file of the next build has them)")

    release = sub.add_parser("release", help="the releases (one per build): list, roll out, roll back, prune")
    step = release.add_subparsers(dest="action", required=True)
    step.add_parser("list", help="every release kept, and which one serves")
    rollout = step.add_parser("rollout", help="serve a release (default: the newest), live if Triton runs")
    rollout.add_argument("release", nargs="?", type=int, help="release id (default: the newest)")
    rollout.add_argument("--force", action="store_true",
                         help="roll out even if the quality gate refuses it (release.max_regression)")
    step.add_parser("rollback", help="serve the previous release again (not gated)")
    prune = step.add_parser("prune", help="delete old releases (never the serving or previous one)")
    prune.add_argument("--keep", type=int, help="newest releases kept (default: release.keep)")

    pipeline = sub.add_parser("pipeline", help="the daily job: import new interaction files, train, gate, "
                                               "roll out, refresh the batch table, prune (resumable)")
    pipeline.add_argument("--inbox", help="folder of new interaction files (default: pipeline.inbox, "
                                          "else <workdir>/inbox)")
    pipeline.add_argument("--batch-db", metavar="URL", help="batch table to refresh (default: pipeline.batch_db; "
                                                            "empty: no batch step)")
    pipeline.add_argument("--force", action="store_true", help="roll out even if the quality gate refuses")
    pipeline.add_argument("--retrain", action="store_true", help="run even without new files")

    status = sub.add_parser("status", help="health of Triton, Milvus and Feast (exit 1 if unhealthy)")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    _batch_arguments(sub.add_parser("batch", parents=[dask],
                                   help="top-K of every user into a database, with the served "
                                        "cascade (recsys batch --k 50 --db sqlite:///recs.db)"))

    events = sub.add_parser("events", help="interactions that change the next answer")
    verb = events.add_subparsers(dest="action", required=True)
    push = verb.add_parser("push", help="send a CSV or JSON-lines file of events (- for stdin) to the "
                                        "running events model")
    push.add_argument("file", help="user_id,item_id[,timestamp][,event_type][,event_value]; - reads stdin")
    push.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    push.add_argument("--url", help=URL_HELP)

    recommend = sub.add_parser("recommend", help="query a running recommender")
    recommend.add_argument("user_ids", nargs="+", type=int)
    recommend.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    recommend.add_argument("--url", help=URL_HELP)
    similar = sub.add_parser("similar", help="query the running similar_items model")
    similar.add_argument("item_ids", nargs="+", type=int)
    similar.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    similar.add_argument("--url", help=URL_HELP)
    for command in (recommend, similar):
        command.add_argument("--filter", metavar="EXPRESSION", help="a filter expression (README, Filters)")
        command.add_argument("--filter-values", metavar="JSON", help="values of the filter's $PARAMETERS")
    for command in _commands(sub):  # the common options are also accepted after the command
        for flags, extra in COMMON_OPTIONS:
            command.add_argument(*flags, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **extra)
    return parser


def _config(args) -> Config:
    overrides: dict = {}
    if args.workdir:
        overrides["workdir"] = args.workdir
    if args.feature_repo:
        overrides["feature_repo"] = args.feature_repo
    if args.no_progress:
        overrides["training"] = {"progress": False}
    if getattr(args, "dask_scheduler", None):
        overrides["dask_scheduler"] = args.dask_scheduler
    data = {}
    for option, key in (("sessions", "num_sessions"), ("items", "num_items"), ("data", "source"),
                        ("interactions", "interactions_path"), ("users", "users_path"),
                        ("items_file", "items_path"), ("schema", "schema_path"),
                        ("test_interactions", "test_interactions_path"), ("split", "split"),
                        ("max_users", "max_users")):
        if getattr(args, option, None):
            data[key] = getattr(args, option)
    if data.get("interactions_path"):
        data.setdefault("source", "files")
    if data:
        overrides["data"] = data
    if getattr(args, "host", None):
        overrides["triton"] = {"host": args.host}
        overrides["milvus"] = {"host": args.host}
    offset = getattr(args, "port_offset", 0)
    if offset:
        base = load_config(args.config)
        overrides["triton"] = {"http_port": base.triton.http_port + offset,
                               "grpc_port": base.triton.grpc_port + offset,
                               "metrics_port": base.triton.metrics_port + offset}
        overrides["milvus"] = {"port": base.milvus.port + offset}
    return load_config(args.config, overrides=overrides)


def _serve(config: Config, reindex: bool) -> None:
    from recsys.jobs import stack

    stack.require_artifacts(config)
    if not (config.model_repository / config.serving.model_name).is_dir():
        stack.export(config)
    from recsys.runtime.servers import StopRequest
    from recsys.runtime.supervisor import Supervisor, state_path

    stop = StopRequest()
    with stack.local_stack(config, reindex=reindex) as (milvus, triton):
        supervisor = Supervisor([s for s in (milvus, triton, triton.front) if s], config.supervisor,
                                state_path(config))
        print(f"Milvus  {config.milvus.endpoint}" + (f"  (pid {milvus.pid}, data {config.milvus_data_dir})" if milvus else ""))
        print(f"Triton  HTTP {triton.http_url}  gRPC {triton.grpc_url}  "
              f"metrics {triton.host}:{triton.metrics_port}  (pid {triton.pid})")
        if triton.front:
            print(f"        HTTP through the request guard (pid {triton.front.pid}) to Triton's private "
                  f"127.0.0.1:{triton.upstream_http_port}")
        print(f"model   {config.serving.model_name}  from {config.model_repository}")
        key_source = ("RECSYS_TRITON_ADMIN_KEY / triton.admin_key" if config.triton.admin_key
                      else config.triton.admin_key_file or config.workdir / "triton" / "admin-key")
        print(f"admin   Triton's repository/config/statistics APIs need header recsys-admin-key "
              f"(key: {key_source})")
        print(f"a server that exits is restarted (at most {config.supervisor.max_restarts} times in "
              f"{config.supervisor.window_s:.0f}s); Ctrl-C to stop.", flush=True)
        try:
            while not stop.sleep(0.5):
                supervisor.check()
        finally:
            state_path(config).unlink(missing_ok=True)
    print("stopped Milvus and Triton", flush=True)


def _build(config: Config) -> None:
    """train -> Feast -> export, a line per stage and a summary with the times."""
    import time

    from core.progress import stage
    from recsys.jobs import stack

    times = {}
    for name, step, detail in (
            ("training", lambda c: stack.train(c, production=True), "data, workflows, tuning, models"),
            ("feast", stack.load_features, f"feast apply + materialize-incremental in {config.feature_repo}"),
            ("export", stack.export, f"Triton model repository {config.model_repository}")):
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        done = step(config)
        times[name] = time.perf_counter() - started
        if name != "training":
            stage(name, detail, times[name])
        if name == "export":
            _say_release(config, done)
    print("== done: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in times.items())
          + f"; artifacts in {config.workdir}", flush=True)


def _say_release(config: Config, release: int) -> None:
    from recsys.jobs.releases import serving_release

    serving = serving_release(config)
    note = ("serving" if serving == release else
            f"built; release {serving} serves until `recsys release rollout {release}`")
    print(f"release {release} ({note}): {config.model_repository}", flush=True)


def _release(config: Config, args) -> int:
    from recsys.jobs import gate, releases

    if args.action == "list":
        for release in releases.list_releases(config):
            figures = "  ".join(f"{label} {release.validation[key]:.4f}" for key, label in gate.METRICS
                                if key in release.validation) or "no validation figures"
            print(f"{release.id:>4}  {release.state:<8}  {release.created}  {release.alias}  {figures}")
        return 0
    if args.action == "prune":
        deleted = releases.prune(config, args.keep or config.release.keep)
        print(f"deleted releases {', '.join(map(str, deleted))}" if deleted else "nothing to prune")
        return 0
    url = releases.live_triton(config)  # None: the next `recsys serve` serves the release
    if args.action == "rollout":
        target = args.release if args.release is not None else max(
            [r.id for r in releases.list_releases(config)], default=None)
        verdict = gate.check(config, target) if target is not None else None
        if verdict is not None:
            print(verdict.table())
            if not verdict.passed and not args.force:
                return 3
            if not verdict.passed:
                print(f"--force: rolling out release {target} although the gate refused it")
    done = (releases.rollback(config, url) if args.action == "rollback"
            else releases.rollout(config, args.release, url))
    print(f"release {done} serves" + ("" if url else " (from the next `recsys serve`; no Triton runs)"))
    return 0


def _events(config: Config, args) -> int:
    """``recsys events push``: exit 0 when every event was applied, 1 when some were not."""
    from recsys.client import RecommendError, RecommenderClient
    from recsys.events import parse, push

    text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    parsed = parse(text)
    protocol = "grpc" if args.grpc else "http"
    url = args.url or ",".join(config.triton.client_endpoints(protocol))
    client = RecommenderClient(url, protocol, config.serving.model_name)
    try:
        accepted, rejected = push(client, parsed, config.serving.events_model_name)
    except RecommendError as exc:
        print(f"error from the events model: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    print(f"{accepted:,} events applied" + (f", {len(rejected):,} rejected:" if rejected else ""))
    for line, error in rejected:
        print(f"  line {line}: {error}")
    return 1 if rejected else 0


def _pipeline(config: Config, args) -> int:
    """``recsys pipeline``: exit 0 when done (or nothing new), 3 when the gate refused the release."""
    from dataclasses import replace

    from recsys.jobs.pipeline import run_pipeline

    if args.inbox or args.batch_db:
        config = replace(config, pipeline=replace(config.pipeline, inbox=args.inbox or config.pipeline.inbox,
                                                  batch_db=args.batch_db or config.pipeline.batch_db))
    outcome = run_pipeline(config, force=args.force, retrain=args.retrain, say=lambda line: print(line, flush=True))
    print(outcome.summary())
    return 3 if outcome.status == "refused" else 0


def _catalog(config: Config, args) -> int:
    from recsys.jobs.catalog import Catalog

    catalog = Catalog(config)
    name = config.milvus.collection
    if args.action == "count":
        print(f"{catalog.count():,} items in {name}")
    elif args.action == "which":
        print(f"{name} -> {catalog.collection() or '(not an alias)'}")
    elif args.action == "upsert":
        from training.dataset import read_table

        items = read_table(args.items_file)
        vectors = None
        if args.vectors:
            given = read_table(args.vectors).set_index("item_id")
            missing = set(items["item_id"]) - set(given.index)
            if missing:
                raise ValueError(f"{args.vectors} has no vector for items {sorted(missing)[:10]}")
            import numpy as np

            vectors = np.stack(given.loc[items["item_id"], "embedding"].to_numpy())
        print(f"upserted {catalog.upsert(items, vectors):,} items into {name} and Feast; searchable now")
    elif args.action == "delete":
        print(f"deleted {catalog.delete(args.item_ids):,} items from {name}")
    elif args.action == "rebuild":
        count = catalog.rebuild()
        print(f"{name} -> {catalog.collection()} ({count:,} items)")
    elif args.action == "journal":
        if args.clear:
            print(f"forgot {catalog.clear_journal():,} catalogue edits; later releases start from their items file")
        else:
            print(f"{catalog.journal_size():,} catalogue edits carried into every later release")
    elif args.action == "drop":
        if not args.yes:
            raise ValueError("dropping the served collection stops retrieval; add --yes")
        print(f"dropped {catalog.drop() or 'nothing'}")
    return 0


def _recommend(config: Config, args) -> int:
    from recsys.client import RecommendError, RecommenderClient

    protocol = "grpc" if args.grpc else "http"
    url = args.url or ",".join(config.triton.client_endpoints(protocol))
    similar = args.command == "similar"
    try:
        client = RecommenderClient(url, protocol, config.serving.model_name)
        within = {"filter": args.filter, "filter_values": args.filter_values}
        answer = (client.similar(args.item_ids, config.serving.similar_model_name, **within) if similar
                  else client.recommend(args.user_ids, **within))
    except RecommendError as exc:
        print(f"error from the {'similar_items model' if similar else 'recommender'}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"cannot reach Triton at {url} ({protocol}): {exc}", file=sys.stderr)
        return 2
    for row, key in enumerate(args.item_ids if similar else args.user_ids):
        if similar:
            flag = "" if answer["found"][row] else "  (not in the collection: most popular)"
        else:
            flag = "  (fallback: most popular)" if answer["fallback"][row] else ""
        pairs = ", ".join(f"{i}:{s:.4f}" for i, s in zip(answer["item_ids"][row], answer["scores"][row])
                          if i != -1)
        print(f"{'item' if similar else 'user'} {key}{flag}: {pairs}")
    return 0


def _evaluate(config: Config, args) -> None:
    from recsys.jobs import stack
    from recsys.jobs.evaluation import evaluate

    data_options = [option for option in ("data", "interactions", "users", "items_file", "schema",
                                          "test_interactions", "split", "max_users", "sessions", "items")
                    if getattr(args, option, None) is not None]
    if args.no_train and data_options:
        raise ValueError(f"--no-train evaluates the existing artifacts; the data options "
                         f"{['--' + o.replace('_', '-') for o in data_options]} would be ignored")
    if not args.no_train:
        stack.train(config)
    stack.require_artifacts(config)
    stack.load_features(config)
    from training.pipeline import resolve_split

    if resolve_split(config) == "sessions":
        from recsys.jobs.evaluation import evaluate_sessions

        with stack.local_milvus(config):
            report = evaluate_sessions(stack.build_evaluation_index(config), max_sessions=args.eval_users or 2000)
        print(f"{report['data']} data, {report['sessions']} held-out sessions: their first n-1 clicks sent as "
              f"recent_items, the n-th click is the truth; the session's clicks excluded "
              f"({report['repeat_next_click_share']:.1%} of next clicks repeat one)")
        print(report["table"])
        known = {s: n for s, n in report["cascade_sources"].items() if s != "session"}
        if known:
            print(f"warning: held-out sessions answered as {known}: Feast knew them (rows left by an earlier "
                  f"build in {config.feature_repo}); evaluate with a new --workdir and --feature-repo")
        print(f"written to {config.workdir / 'evaluation' / 'sessions.json'}")
        return
    with stack.local_milvus(config):
        report = evaluate(stack.build_evaluation_index(config), max_users=args.eval_users)
    print(f"{report['data']} data, {report['split']} split, {report['users']} test users, "
          f"{report['catalogue']} items; training items of each user excluded")
    print(report["table"])
    print(f"written to {config.workdir / 'evaluation' / 'metrics.json'}")


PROJECT_LOGGERS = ("core", "training", "vector_index", "operators", "ensemble", "recsys", "feature_repo", "benchmarks")


def _quiet_libraries() -> None:
    """Hide TensorFlow's C++ info logs; must run before TensorFlow is first imported."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _LogFile(logging.FileHandler):
    """The log file, made at its first line only (a command that fails on its input leaves no
    work directory behind); a directory that cannot be written drops the lines."""

    def __init__(self, path):
        super().__init__(path, delay=True)

    def _open(self):
        import os

        os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
        return super()._open()

    def handleError(self, record):  # noqa: N802 - logging's name
        pass


def _route_logs(config: Config, verbose: bool) -> None:
    """The terminal shows the project's warnings (everything from INFO with ``-v``); the
    libraries' warnings (TensorFlow, absl, NVTabular, Feast, Python warnings) and every INFO
    line go to ``<workdir>/logs/recsys.log`` instead."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if getattr(h, "recsys", False)]:  # main() called again
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler()
    console.recsys = True
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        console.addFilter(lambda record: record.name.split(".")[0] in PROJECT_LOGGERS)
    root.addHandler(console)
    to_file = _LogFile(config.workdir / "logs" / "recsys.log")
    to_file.recsys = True
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(to_file)
    logging.captureWarnings(True)
    for name in ("tensorflow", "absl"):  # they would also print on their own handlers
        logging.getLogger(name).propagate = True
        logging.getLogger(name).handlers.clear()


def _batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``recsys batch``."""
    parser.add_argument("--k", type=int, help=f"items per user (default {DEFAULT_K}; at most serving.retrieval_k)")
    parser.add_argument("--db", default=DEFAULT_DB,
                        help=f"SQLAlchemy database URL (default {DEFAULT_DB}, relative to the current "
                             "directory; e.g. postgresql://user:password@host:5432/dbname)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--users", dest="user_ids", nargs="+", type=int, metavar="ID",
                     help="these users only (default: every user of the training data)")
    who.add_argument("--users-file", metavar="PATH",
                     help="users from a file: one id per line, or CSV/parquet with a user_id column")
    parser.add_argument("--chunk-size", type=int, help=f"users per chunk and transaction (default {DEFAULT_CHUNK})")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted or failed run")
    parser.add_argument("--keep-runs", type=int, default=DEFAULT_KEEP,
                        help=f"complete runs kept; older ones are deleted when a run completes (default {DEFAULT_KEEP})")
    parser.add_argument("--pause", type=float, default=0.0, metavar="SECONDS",
                        help="sleep after each chunk (leaves CPU to a server on the same machine)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes running the cascade, each with its own copy of the models "
                             "(default 1: this process; the number of cores for throughput)")
    parser.add_argument("--filter", metavar="EXPRESSION",
                        help="a filter expression, as online (README, Filters), e.g. "
                             "'INCLUDE ItemID WHERE Items.genres IN ($GENRES)'")
    parser.add_argument("--filter-values", metavar="JSON",
                        help='values of the filter\'s $PARAMETERS, e.g. \'{"GENRES": ["Comedy"]}\'')


def _batch(config: Config, args: argparse.Namespace) -> int:
    """``recsys batch``: run (or resume) a batch and print what it did."""
    import signal

    from recsys.jobs.batch import render, run_batch
    from recsys.jobs.batch_store import safe_url

    options = BatchOptions(k=args.k, db_url=args.db, user_ids=args.user_ids, users_file=args.users_file,
                           chunk_size=args.chunk_size, resume=args.resume, keep_runs=args.keep_runs,
                           pause_s=args.pause, progress=config.training.progress and not args.no_progress, workers=args.workers,
                           filter=args.filter, filter_values=args.filter_values)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_batch(config, options)
    except KeyboardInterrupt:
        print("recsys batch: interrupted; the run is marked failed and can be continued with --resume "
              "(see recommendation_runs)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render(result, safe_url(options.db_url)))
    return 0


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.verbose:
        _quiet_libraries()
    try:
        config = _config(args)
        _route_logs(config, args.verbose)
        if args.command in ("recommend", "similar"):
            return _recommend(config, args)
        if args.command == "catalog":
            return _catalog(config, args)
        if args.command == "release":
            return _release(config, args)
        if args.command == "batch":
            return _batch(config, args)
        if args.command == "pipeline":
            return _pipeline(config, args)
        if args.command == "events":
            return _events(config, args)
        if args.command == "status":
            from recsys.status import render, status

            checks = status(config)
            print(render(checks, as_json=args.json))
            return 0 if all(check.ok for check in checks) else 1
        from recsys.jobs import stack

        if args.command == "demo":
            from recsys.demo import run_demo

            run_demo(config, requests=args.requests)
        elif args.command == "build":
            _build(config)
        elif args.command == "train":
            stack.train(config, production=True)
        elif args.command == "evaluate":
            _evaluate(config, args)
        elif args.command == "features":
            stack.load_features(config)
        elif args.command == "index":
            stack.require_artifacts(config)
            print(f"{stack.build_index(config)} item vectors in {config.milvus.collection}")
        elif args.command == "export":
            stack.require_artifacts(config)
            _say_release(config, stack.export(config))
        elif args.command == "serve":
            _serve(config, args.reindex)
        return 0
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"recsys {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
