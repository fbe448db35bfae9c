"""Events through the real Triton `events` model change the next answer: a clicked item is
excluded at once, a user nobody knew becomes personalized, bad events are rejected one by one
while the rest apply, the next build gets them, and events pushed while clients query lose
nothing and fail no request (SQLite online store in WAL mode)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

from core.artifacts import Artifacts
from recsys import cli
from recsys.client import RecommenderClient
from training import imported

pytestmark = pytest.mark.integration


def _history(config, user: int) -> list[int]:
    store = config.open_feature_store()
    row = store.get_online_features(features=["user_features:history"], entity_rows=[{"user_id": user}]).to_dict()
    return list(row["history"][0] or [])


def test_the_next_answer_excludes_a_clicked_item_and_a_new_user_turns_personalized(serving_stack, clients):
    config, _, _ = serving_stack
    client = clients["grpc"]
    users = np.sort(pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy())
    user = int(users[-7])
    before = client.recommend([user])["item_ids"][0].tolist()
    answer = client.put_events([user, user], before[:2])
    assert answer["accepted"].tolist() == [True, True] and answer["error"].tolist() == ["", ""]
    after = clients["http"].recommend([user])["item_ids"][0].tolist()  # the very next request
    assert not set(before[:2]) & set(after)
    assert _history(config, user)[:2] == [before[1], before[0]]  # most recent first

    newcomer = int(users.max()) + 4242
    cold = client.recommend([newcomer])
    assert cold["source"][0] == "popular" and cold["fallback"][0]
    clicked = [int(i) for i in cold["item_ids"][0][:3]]
    assert client.put_events([newcomer] * 3, clicked)["accepted"].all()
    warm = client.recommend([newcomer])
    assert warm["source"][0] == "personalized" and not warm["fallback"][0]
    assert not set(clicked) & set(warm["item_ids"][0].tolist())


def test_bad_events_are_rejected_one_by_one_and_the_rest_apply(serving_stack, clients, tmp_path, capsys):
    config, _, triton = serving_stack
    users = np.sort(pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy())
    items = pd.read_parquet(Artifacts.of(config).items)["item_id"].to_numpy()
    user = int(users[-9])
    now = int(time.time())
    answer = clients["http"].put_events([user, user, -1, user, user], [items[0], 4, items[1], items[2], items[3]],
                                        [now, now, now, now + 10 * 86400, 0])
    assert answer["accepted"].tolist() == [True, False, False, False, True]
    assert "item_id 4 is not in the catalogue" in answer["error"][1]
    assert "user_id must be >= 0" in answer["error"][2] and "ahead" in answer["error"][3]
    assert set(_history(config, user)[:2]) == {int(items[0]), int(items[3])}

    events = tmp_path / "events.csv"  # the CLI: unreadable lines reported, the rest sent
    events.write_text(f"user_id,item_id,timestamp,event_type\n{user},{items[5]},2026-12-01T10:00:00Z,click\n"
                      f"x,{items[6]},{now},click\n{user},{items[7]},yesterday,click\n{user},99,{now},buy\n")
    code = cli.main(["--workdir", str(config.workdir), "events", "push", str(events), "--url", triton.http_url])
    out = capsys.readouterr().out
    assert code == 1 and "1 events applied, 3 rejected" in out
    assert "line 3: user_id must be a 64-bit integer" in out and "line 4: timestamp 'yesterday'" in out
    assert "line 5: item_id 99 is not in the catalogue" in out
    logged = imported.interactions(config.imported_dir, config.events_dir)
    assert {(user, int(items[0])), (user, int(items[3])), (user, int(items[5]))} <= set(
        zip(logged["user_id"].tolist(), logged["item_id"].tolist()))


def test_events_while_clients_query_lose_nothing_and_fail_nothing(serving_stack):
    config, _, triton = serving_stack
    users = np.sort(pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy())
    items = pd.read_parquet(Artifacts.of(config).items)["item_id"].to_numpy()
    writers_users = [int(u) for u in users[-40:-20]]
    stop, errors, answered = threading.Event(), [], [0]

    def query(protocol: str, seed: int) -> None:
        client = RecommenderClient(triton.grpc_url if protocol == "grpc" else triton.http_url, protocol)
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            try:
                client.recommend(rng.choice(users, size=int(rng.integers(1, 5)), replace=False))
                answered[0] += 1
            except Exception as exc:  # counted: the bar is zero
                errors.append(repr(exc))
        client.close()

    readers = [threading.Thread(target=query, args=(p, s)) for s, p in enumerate(("grpc", "http"))]
    for reader in readers:
        reader.start()
    sent: dict[int, set[int]] = {u: set() for u in writers_users}
    writer = RecommenderClient(triton.grpc_url, "grpc")
    rng = np.random.default_rng(1)
    try:
        for _ in range(60):
            batch_users = rng.choice(writers_users, size=4)
            batch_items = rng.choice(items, size=4)
            answer = writer.put_events(batch_users, batch_items)
            assert answer["accepted"].all(), answer["error"]
            for u, i in zip(batch_users.tolist(), batch_items.tolist()):
                sent[u].add(i)
    finally:
        stop.set()
        for reader in readers:
            reader.join(60)
        writer.close()
    assert errors == [] and answered[0] > 0
    for user, pushed in sent.items():
        assert pushed <= set(_history(config, user)), f"user {user} lost events"


def test_a_session_is_personalized_from_its_clicks_before_feast_knows_it(serving_stack, clients):
    from recsys.client import RecommendError

    config, _, _ = serving_stack
    users = np.sort(pd.read_parquet(Artifacts.of(config).users)["user_id"].to_numpy())
    popular = pd.read_parquet(Artifacts.of(config).popular_items)["item_id"].to_numpy()
    visitor, known = int(users.max()) + 777, int(users[-11])
    clicks = [int(i) for i in popular[3:6]]
    for client in clients.values():
        answer = client.recommend([visitor, known, visitor + 1], recent_items=[clicks, clicks[:1], []])
        assert answer["source"].tolist() == ["session", "personalized", "popular"]
        assert answer["fallback"].tolist() == [False, False, True]
        assert not set(clicks) & set(answer["item_ids"][0].tolist())
        assert clicks[0] not in answer["item_ids"][1].tolist()
        with pytest.raises(RecommendError, match="recent_items must be"):
            client._infer(client.model_name, "user_id", [visitor, known], ("item_ids",), extra=[
                client._tensor("recent_items", np.array([[1, 2, 3]], dtype=np.int64), "INT64")])
