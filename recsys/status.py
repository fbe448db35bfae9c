"""``recsys status``: is every part of the serving stack healthy?

Triton (live, ready, and ready per model of the exported repository), Milvus (reachable,
collection present and loaded, row count), Feast (registry readable, last materialization
per feature view) and, under ``recsys serve``, each server's restarts and last exit. Each check is one :class:`Check`; the command exits non-zero if any fails.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from core.config import Config
from core.contract import model_names
from recsys.jobs import releases
from recsys.runtime.supervisor import read_state, state_path
from vector_index.client import MilvusUnavailable, connect, quiet_pymilvus
from vector_index.collections import aliased_collection


@dataclass
class Check:
    """One health fact: which component, what was checked, whether it is fine, and detail."""

    component: str
    name: str
    ok: bool
    detail: str = ""


def _http_status(url: str, timeout_s: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except OSError as exc:
        return False, f"unreachable ({getattr(exc, 'reason', exc)})"


def triton_checks(config: Config, timeout_s: float = 3.0) -> list[Check]:
    """Server live/ready, then every model of the exported repository ready."""
    base = f"http://{config.triton.host}:{config.triton.http_port}"
    checks = []
    for what in ("live", "ready"):
        ok, detail = _http_status(f"{base}/v2/health/{what}", timeout_s)
        checks.append(Check("triton", what, ok, f"{base}: {detail}"))
    if not checks[0].ok:
        return checks
    repository = config.model_repository
    models = sorted(p.name for p in repository.glob("*") if (p / "config.pbtxt").is_file()) \
        if repository.is_dir() else [config.serving.model_name]
    for model in models:
        ok, detail = _http_status(f"{base}/v2/models/{model}/ready", timeout_s)
        checks.append(Check("triton", f"model {model} ready", ok, detail))
    return checks


def release_checks(config: Config, timeout_s: float = 3.0) -> list[Check]:
    """The serving release (none before the first build), and that a running Triton serves it."""
    serving = releases.serving_release(config)
    if serving is None:
        return []
    kept = len(releases.list_releases(config))
    checks = [Check("release", f"{serving} serving", True, f"{kept} kept in {releases.releases_dir(config)}")]
    base = f"http://{config.triton.host}:{config.triton.http_port}"
    for model in model_names(config):
        try:
            with urllib.request.urlopen(f"{base}/v2/models/{model}", timeout=timeout_s) as response:
                versions = json.loads(response.read()).get("versions", [])
        except (OSError, ValueError):
            continue  # no Triton: the triton checks say so
        checks.append(Check("release", f"{model} serves {serving}", str(serving) in versions,
                            f"Triton serves version(s) {', '.join(versions) or 'none'}"))
    return checks


def milvus_checks(config: Config, timeout_s: float = 3.0) -> list[Check]:
    """Reachable, collection exists and is loaded, with its row count."""
    cfg = config.milvus
    try:
        with quiet_pymilvus():  # its error lines duplicate ours
            client = connect(cfg, timeout_s)
            present = client.has_collection(cfg.collection)
    except (MilvusUnavailable, Exception) as exc:  # noqa: B014 - pymilvus raises many types
        return [Check("milvus", "reachable", False, f"{cfg.endpoint}: {' '.join(str(exc).split())[:200]}")]
    checks = [Check("milvus", "reachable", True, cfg.endpoint)]
    if not present:
        checks.append(Check("milvus", f"collection {cfg.collection}", False, "missing (run `recsys index`)"))
        client.close()
        return checks
    target = aliased_collection(client, cfg.collection)
    state = str(client.get_load_state(cfg.collection).get("state", "")).rsplit(".", 1)[-1]
    rows = int(client.get_collection_stats(cfg.collection).get("row_count", 0))
    checks.append(Check("milvus", f"collection {cfg.collection} loaded", state == "Loaded",
                        f"{state} ({'alias of ' + target if target else 'collection'})"))
    checks.append(Check("milvus", f"collection {cfg.collection} rows", rows > 0, f"{rows:,} item vectors"))
    client.close()
    return checks


def feast_checks(config: Config) -> list[Check]:
    """Registry readable, and per feature view the end of its last materialization."""
    try:
        store = config.open_feature_store()
        views = store.list_feature_views()
    except Exception as exc:
        return [Check("feast", "registry", False, f"{config.feature_store_file}: {' '.join(str(exc).split())[:200]}")]
    checks = [Check("feast", "registry", bool(views), f"{len(views)} feature views")]
    for view in sorted(views, key=lambda v: v.name):
        end = view.most_recent_end_time
        if end is None:
            checks.append(Check("feast", f"view {view.name} materialized", False, "never materialized"))
            continue
        end = end if end.tzinfo else end.replace(tzinfo=timezone.utc)
        age = datetime.now(timezone.utc) - end
        checks.append(Check("feast", f"view {view.name} materialized", True,
                            f"up to {end:%Y-%m-%d %H:%M:%S} UTC ({age.total_seconds() / 3600:.1f} h ago)"))
    return checks


def supervisor_checks(config: Config) -> list[Check]:
    """Restarts of the servers of a running ``recsys serve`` (none without one): a server
    that was restarted is fine once it runs again; one being restarted, or given up on, is not."""
    state = read_state(state_path(config))
    if state is None:
        return []
    checks = []
    for name, record in sorted(state["servers"].items()):
        detail = f"{record['restarts']} restarts"
        if record["exits"]:
            last = record["exits"][-1]
            detail += f", last exit {last['at']}: {last['description']}"
        if record.get("last_recovery_s") is not None:
            detail += f", ready again after {record['last_recovery_s']:.1f}s"
        checks.append(Check("serve", f"{name} {record['state']}", record["state"] == "running", detail))
    return checks


def status(config: Config) -> list[Check]:
    """Every check, Triton, Milvus, Feast, and the restarts ``recsys serve`` made."""
    return (triton_checks(config) + release_checks(config) + milvus_checks(config) + feast_checks(config)
            + supervisor_checks(config))


def render(checks: list[Check], as_json: bool = False) -> str:
    if as_json:
        return json.dumps({"healthy": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]},
                          indent=2)
    width = max(len(f"{c.component} {c.name}") for c in checks)
    lines = [f"{'ok ' if c.ok else 'BAD'}  {(c.component + ' ' + c.name).ljust(width)}  {c.detail}"
             for c in checks]
    lines.append("healthy" if all(c.ok for c in checks) else "UNHEALTHY")
    return "\n".join(lines)
