"""Events: how fast one reaches an answer, how many per second go in, and what they cost serving.

    python -m benchmarks.events --workdir artifacts [--events 200] [--seconds 15] [--redis HOST:PORT]

On a built work directory (``make demo`` leaves one): its artifacts exported as a new release
and served by a local Milvus and two Triton replicas on free ports (same model repository and Feast store). Two gRPC
clients query single users throughout.

* **Freshness**: ``--events`` times, a known user's current first item is sent as an event
  through replica A, then the user is asked for again - through A (single replica) or through
  B (the other replica) - until the item is gone; the time from the event's acceptance to that
  answer, p50 / p99 / max.
* **Ingestion**: ``--seconds`` of the querying clients alone, then as long with a writer
  sending batches of 50 events as fast as it is answered: events/s, and the clients' p50/p99 in
  both phases side by side.

It writes its events into the work directory's Feast repository (online store and events log,
which later builds read): run it on a copy of both.

``--redis HOST:PORT``: the same on the Redis online store (a running ``redis-server``): the
features are materialized into it first and every model reads and writes it
(``feature_store.redis.yaml``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import threading
import time

import numpy as np
import pandas as pd

from benchmarks.local import add_workdir_arguments, built_workdir
from benchmarks.rollout import clients
from recsys.client import RecommenderClient
from recsys.jobs import featurestore, releases, stack
from recsys.runtime.servers import TritonProcess, free_port, running


REDIS_YAML = "feature_store.redis.yaml"


def freshness(writer: RecommenderClient, reader: RecommenderClient, users: np.ndarray, events: int,
              timeout_s: float = 10.0) -> np.ndarray:
    """Seconds from each event's acceptance to the first answer of ``reader`` without the item."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(events):
        user = int(rng.choice(users))
        item = int(reader.recommend([user])["item_ids"][0][0])
        assert writer.put_events([user], [item])["accepted"].all()
        accepted = time.monotonic()
        while item in reader.recommend([user])["item_ids"][0].tolist():
            if time.monotonic() - accepted > timeout_s:
                raise RuntimeError(f"user {user}: item {item} still offered {timeout_s:.0f}s after its event")
        out.append(time.monotonic() - accepted)
    return np.array(out)


def _percentiles(seconds) -> dict:
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": np.percentile(ms, 50), "p99_ms": np.percentile(ms, 99), "max_ms": ms.max()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workdir_arguments(parser)
    parser.add_argument("--events", type=int, default=200, help="events timed for freshness, per setup")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each ingestion phase")
    parser.add_argument("--redis", metavar="HOST:PORT", help="use the Redis online store at this address")
    args = parser.parse_args(argv)

    config = built_workdir(args)
    if args.redis:
        os.environ["FEAST_REDIS_CONNECTION_STRING"] = args.redis
        os.environ["RECSYS_FEATURE_STORE_YAML"] = REDIS_YAML  # the models read it at load
        config = dataclasses.replace(config, feature_store_yaml=REDIS_YAML)
        featurestore.apply_and_materialize(config)
    release = stack.export(config)  # a release of the artifacts, with the events model
    users = pd.read_parquet(releases.release_artifacts(config, release).users)["user_id"].to_numpy()
    other = dataclasses.replace(config, triton=dataclasses.replace(
        config.triton, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()))
    with stack.local_milvus(config):
        releases.rollout(config, release)
        first, second = TritonProcess(config), TritonProcess(other)
        with running(first, second):
            a, b = RecommenderClient(first.grpc_url, "grpc"), RecommenderClient(second.grpc_url, "grpc")
            stop, log = threading.Event(), []
            threads = clients(first.grpc_url, users, 2, stop, log)
            rows = [{"setup": "one replica (event and answer through A)",
                     **_percentiles(freshness(a, a, users, args.events))},
                    {"setup": "two replicas (event through A, answer through B)",
                     **_percentiles(freshness(a, b, users, args.events))}]
            log.clear()
            time.sleep(args.seconds)
            quiet = list(log)
            log.clear()
            sent, started = 0, time.monotonic()
            rng = np.random.default_rng(5)
            items = pd.read_parquet(releases.serving_artifacts(config).items)["item_id"].to_numpy()
            while time.monotonic() - started < args.seconds:
                answer = a.put_events(rng.choice(users, 50), rng.choice(items, 50))
                sent += int(answer["accepted"].sum())
            rate = sent / (time.monotonic() - started)
            busy = list(log)
            stop.set()
            for thread in threads:
                thread.join(30)
            a.close()
            b.close()
    print(f"freshness: {args.events} events per setup, 2 gRPC clients querying meanwhile "
          f"(Feast online store: {config.feature_store_yaml})")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".1f"))
    print(f"\ningestion: {rate:,.0f} events/s (batches of 50, one writer) for {args.seconds:.0f}s")
    table = pd.DataFrame([{"phase": phase, "requests": len(part),
                           "errors": sum(release is None for _, _, release in part),
                           **_percentiles([s for _, s, release in part if release is not None])}
                          for phase, part in (("no events", quiet), (f"{rate:,.0f} events/s", busy))])
    print(table.to_markdown(index=False, floatfmt=".1f"))


if __name__ == "__main__":
    main()
