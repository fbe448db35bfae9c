"""Locked down by default: loopback-only sockets (Milvus included), Milvus authentication,
Triton's administrative APIs behind a key, and the `status` command."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from recsys.runtime.servers import TRITON_ADMIN_HEADER, TRITON_GRPC_ADMIN_HEADER

pytestmark = pytest.mark.integration


def _descendants(*roots: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def test_every_server_process_listens_on_loopback_only(serving_stack):
    _, milvus, triton = serving_stack
    result = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ours = _descendants(milvus.pid, triton.pid)
    assert len(ours) >= 3  # launcher, milvus itself, tritonserver (+ Python backend stubs)
    sockets = [line for line in result.stdout.splitlines()
               if any(f"pid={pid}," in line for pid in ours)]
    addresses = sorted({line.split()[3] for line in sockets})
    assert addresses, result.stdout
    for address in addresses:
        assert address.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")), addresses
    # Milvus' ~10 internal ports live in its own network namespace: the machine sees only the
    # client port.
    milvus_ports = {line.split()[3] for line in sockets
                    if any(f"pid={pid}," in line for pid in _descendants(milvus.pid))}
    assert milvus_ports == {f"127.0.0.1:{milvus.port}"}


def test_milvus_refuses_clients_without_the_token(serving_stack):
    from pymilvus import MilvusClient

    config, milvus, _ = serving_stack
    assert config.milvus.auth and config.milvus.token.startswith("root:")
    for token in ("", "root:Milvus", "root:wrong-password"):
        with pytest.raises(Exception):
            client = MilvusClient(uri=milvus.uri, token=token, timeout=3)
            client.list_collections()
    client = MilvusClient(uri=milvus.uri, token=config.milvus.token, timeout=3)
    assert client.has_collection(config.milvus.collection)
    client.close()


def test_secrets_are_not_written_to_logs_or_exported_files(serving_stack, clients, catalogue):
    config, milvus, triton = serving_stack
    password = config.milvus.token.split(":", 1)[1]
    clients["http"].recommend(catalogue[0][:2])
    files = [milvus.log_path, triton.log_path, *config.model_repository.rglob("*.json"),
             *config.model_repository.rglob("*.pbtxt"), *(config.milvus_data_dir / "logs").rglob("*")]
    for path in files:
        if path.is_file():
            text = path.read_bytes().decode(errors="replace")
            assert password not in text, path
            assert triton.admin_key not in text, path
    assert password not in repr(config)


def _post(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_triton_admin_apis_need_the_key_inference_does_not(serving_stack, clients, catalogue):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    config, _, triton = serving_stack
    index = f"http://{triton.http_url}/v2/repository/index"
    status, body = _post(index)
    assert status in (401, 403) and "restricted" in body.lower(), (status, body)
    status, body = _post(index, {TRITON_ADMIN_HEADER: "wrong"})
    assert status in (401, 403)
    status, body = _post(index, {TRITON_ADMIN_HEADER: triton.admin_key})
    assert status == 200 and config.serving.model_name in body
    for path in (f"/v2/models/{config.serving.model_name}/stats", f"/v2/models/{config.serving.model_name}/config"):
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://{triton.http_url}{path}", timeout=10)
        assert denied.value.code in (401, 403)

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(InferenceServerException):
        client.get_model_repository_index()
    models = client.get_model_repository_index(headers={TRITON_GRPC_ADMIN_HEADER: triton.admin_key})
    assert any(model.name == config.serving.model_name for model in models.models)
    with pytest.raises(InferenceServerException):
        client.unload_model(config.serving.model_name)
    client.close()
    # Inference, health and metadata stay open.
    assert clients["grpc"].ready()
    answer = clients["http"].recommend(catalogue[0][:1])
    assert answer["item_ids"].shape == (1, config.serving.top_k)
    assert (config.workdir / "triton" / "admin-key").stat().st_mode & 0o077 == 0


def _status(config_path: Path) -> tuple[int, dict, str]:
    recsys = str(Path(sys.executable).parent / "recsys")
    result = subprocess.run([recsys, "--config", str(config_path), "status", "--json"],
                            capture_output=True, text=True, timeout=120)
    return result.returncode, json.loads(result.stdout), result.stderr


def _write_config(path: Path, config, milvus_port: int) -> None:
    path.write_text(f"""
workdir = "{config.workdir}"
feature_repo = "{config.feature_repo}"
[milvus]
port = {milvus_port}
collection = "{config.milvus.collection}"
token_file = "{config.milvus.token_file}"
[triton]
http_port = {config.triton.http_port}
""")


def test_status_reports_every_part_and_fails_when_one_is_down(serving_stack, tmp_path):
    config, milvus, _ = serving_stack
    _write_config(tmp_path / "healthy.toml", config, milvus.port)
    code, report, stderr = _status(tmp_path / "healthy.toml")
    checks = {c["component"] + " " + c["name"]: c for c in report["checks"]}
    assert code == 0 and report["healthy"], report
    assert checks["triton live"]["ok"] and checks["triton ready"]["ok"]
    assert checks[f"triton model {config.serving.model_name} ready"]["ok"]
    assert checks["release 1 serving"]["ok"]  # the session's stack serves its first release ...
    assert checks[f"release {config.serving.model_name} serves 1"]["ok"]  # ... and Triton serves it
    rows = checks[f"milvus collection {config.milvus.collection} rows"]["detail"]
    assert rows.split()[0].replace(",", "").isdigit() and int(rows.split()[0].replace(",", "")) > 0
    assert checks[f"milvus collection {config.milvus.collection} loaded"]["ok"]
    assert any(name.startswith("feast view") and c["ok"] and "UTC" in c["detail"]
               for name, c in checks.items())
    assert "Traceback" not in stderr

    from recsys.runtime.servers import free_port

    _write_config(tmp_path / "no-milvus.toml", config, free_port())
    code, report, _ = _status(tmp_path / "no-milvus.toml")
    assert code == 1 and not report["healthy"]
    bad = [c for c in report["checks"] if not c["ok"]]
    assert [c["component"] for c in bad] == ["milvus"] and "cannot connect" in bad[0]["detail"]
