"""Beyond one process: Feast with a Redis online store (a real redis-server from Debian's
packages, started here) and two Triton instances serving the same model repository behind one
client configuration (round robin, skipping a replica that is down).

The second Triton reads its features from Redis, the session's first one from SQLite: the
served answers must be identical whichever store and whichever replica answers."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.artifacts import Artifacts
from recsys.client import RecommenderClient, TritonUnreachable
from recsys.runtime.servers import ManagedProcess, TritonProcess, free_port, running
from support import apt_install, served, settled

pytestmark = pytest.mark.integration

REDIS_YAML = "feature_store.redis.yaml"
UNKNOWN = [123_456_789, -5]


class RedisProcess(ManagedProcess):
    """``redis-server`` on 127.0.0.1, no persistence, its working directory temporary."""

    def __init__(self, binary: str, port: int, root: Path):
        self.port = port
        command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                   "--dir", str(root), "--protected-mode", "yes", "--daemonize", "no"]
        super().__init__("redis-server", command, root / "redis.log")

    def start(self, timeout_s: float = 30.0) -> None:
        import redis

        super().start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s}s")


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    apt_install("redis-server")
    found = shutil.which("redis-server")
    assert found, "apt-get installed redis-server but it is not on PATH"
    subprocess.run(["service", "redis-server", "stop"], capture_output=True)  # the package starts one
    return found


@pytest.fixture(scope="module")
def redis_server():
    """A real Redis on a free loopback port; stopped by PID at the end."""
    root = Path(tempfile.mkdtemp(prefix="recsys-redis-"))
    server = RedisProcess(_redis_binary(), free_port(), root)
    try:
        with running(server):
            pid = server.pid
            yield f"127.0.0.1:{server.port}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.fixture(scope="module")
def redis_replica(serving_stack, redis_server, tmp_path_factory):
    """The Feast repo applied and materialized into Redis through ``feature_store.redis.yaml``,
    and a second Triton serving the session's model repository with its Feast reads switched
    to Redis by configuration (``RECSYS_FEATURE_STORE_YAML``), not by re-exporting."""
    from recsys.jobs import featurestore

    config, _, first = serving_stack
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEAST_REDIS_CONNECTION_STRING", redis_server)
        on_redis = dataclasses.replace(config, feature_store_yaml=REDIS_YAML)
        featurestore.apply_and_materialize(on_redis)
        assert (config.feature_repo / "data" / "registry.redis.db").is_file()
        replica_config = dataclasses.replace(
            on_redis, workdir=tmp_path_factory.mktemp("replica"),
            triton=dataclasses.replace(config.triton, http_port=free_port(), grpc_port=free_port(),
                                       metrics_port=free_port(), admin_key="replica-admin-key"))
        patch.setenv("RECSYS_FEATURE_STORE_YAML", REDIS_YAML)  # read by the model at load
        second = TritonProcess(replica_config, model_repository=config.model_repository)
        patch.delenv("RECSYS_FEATURE_STORE_YAML")
        with running(second):
            yield config, first, second


def _users(config, cold_users) -> np.ndarray:
    """Every user of the users table (cold ones included), then unknown ids."""
    known = pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy()
    assert set(cold_users) <= set(known.tolist())
    return np.concatenate([np.sort(known), np.asarray(UNKNOWN, dtype=np.int64)])


def test_redis_online_store_serves_the_same_answers_as_sqlite(redis_replica, cold_users, redis_server):
    import redis

    config, first, second = redis_replica
    host, port = redis_server.split(":")
    server = redis.Redis(host=host, port=int(port))
    users = _users(config, cold_users)
    assert server.dbsize() >= len(users) - len(UNKNOWN)  # one hash per user and per item
    reads_before = server.info("stats")["keyspace_hits"]
    batch = config.serving.max_batch_users
    for protocol, url in (("grpc", "grpc_url"), ("http", "http_url")):
        on_sqlite = RecommenderClient(getattr(first, url), protocol)
        on_redis = RecommenderClient(getattr(second, url), protocol)
        try:
            expected = settled(on_sqlite, users, batch, details=True)
            assert settled(on_redis, users, batch, details=True) == expected, protocol
        finally:
            on_sqlite.close()
            on_redis.close()
    # the second Triton really reads Redis: a hash per user it was asked for (beyond its item
    # catalogue, read at model start), and the cold users are answered from their features
    assert server.info("stats")["keyspace_hits"] - reads_before >= len(set(users.tolist()) - set(UNKNOWN))
    assert {expected[u][3] for u in cold_users} == {"features"}
    server.close()


def test_round_robin_over_two_replicas_answers_identically(redis_replica, cold_users):
    config, first, second = redis_replica
    users = _users(config, cold_users)[:40]
    for protocol, url in (("http", "http_url"), ("grpc", "grpc_url")):
        single = RecommenderClient(getattr(first, url), protocol)
        both = RecommenderClient(f"{getattr(first, url)},{getattr(second, url)}", protocol)
        try:
            expected = settled(single, users, 8, details=True)
            for _ in range(3):  # the same settled answers through the replicas in turn
                assert served(both, users, 8, details=True) == expected, protocol
            assert sum(both.answered) == 3 * len(users) // 8  # in turn: 8 and 7 of 15 requests
            assert abs(both.answered[0] - both.answered[1]) <= 1, both.answered
        finally:
            single.close()
            both.close()


def test_events_on_redis_reach_the_next_answer_while_clients_query(redis_replica, redis_server):
    """The `events` model of the replica that reads Redis writes Redis: events pushed while a
    client queries that replica fail no request, lose no event, and the next answer of the
    user excludes the item."""
    import threading

    config, _, second = redis_replica
    users = np.sort(pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy())[-60:-40]
    items = pd.read_parquet(Artifacts.of(config).items)["item_id"].to_numpy()
    stop, errors = threading.Event(), []

    def query() -> None:
        client = RecommenderClient(second.http_url, "http")
        rng = np.random.default_rng(4)
        while not stop.is_set():
            try:
                client.recommend(rng.choice(users, size=3, replace=False))
            except Exception as exc:  # counted: the bar is zero
                errors.append(repr(exc))
        client.close()

    reader = threading.Thread(target=query)
    reader.start()
    writer = RecommenderClient(second.grpc_url, "grpc")
    rng, sent = np.random.default_rng(2), {}
    try:
        for _ in range(30):
            batch_users, batch_items = rng.choice(users, 4), rng.choice(items, 4)
            assert writer.put_events(batch_users, batch_items)["accepted"].all()
            for user, item in zip(batch_users.tolist(), batch_items.tolist()):
                sent.setdefault(user, set()).add(item)
    finally:
        stop.set()
        reader.join(60)
    user = int(users[0])
    offered = writer.recommend([user])["item_ids"][0].tolist()
    assert writer.put_events([user], [offered[0]])["accepted"].all()
    assert offered[0] not in writer.recommend([user])["item_ids"][0].tolist()
    writer.close()
    assert errors == []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEAST_REDIS_CONNECTION_STRING", redis_server)
        store = dataclasses.replace(config, feature_store_yaml=REDIS_YAML).open_feature_store()
        rows = store.get_online_features(features=["user_features:history"],
                                         entity_rows=[{"user_id": u} for u in sent]).to_dict()
    for user, history in zip(rows["user_id"], rows["history"]):
        assert sent[user] <= set(history or []), f"user {user} lost events on Redis"


def test_round_robin_skips_a_replica_that_is_down(redis_replica, cold_users):
    """Last in this module: it stops the second replica. Every request is still answered,
    by the first; with both endpoints down the caller gets an error naming each one."""
    config, first, second = redis_replica
    users = _users(config, cold_users)[:16]
    pid = second.pid
    second.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    for protocol, url in (("http", "http_url"), ("grpc", "grpc_url")):
        single = RecommenderClient(getattr(first, url), protocol)
        both = RecommenderClient([getattr(second, url), getattr(first, url)], protocol, rest_s=60)
        try:
            expected = settled(single, users, 4, details=True)
            assert served(both, users, 4, details=True) == expected
            assert both.answered == [0, len(users) // 4]
        finally:
            single.close()
            both.close()
    dead = RecommenderClient([second.http_url, f"127.0.0.1:{free_port()}"], "http")
    with pytest.raises(TritonUnreachable, match=rf"{second.http_url}: .*refused.*; 127\.0\.0\.1:\d+: "):
        dead.recommend(users[:1])
    dead.close()
    assert first.ready()  # the first replica never noticed
