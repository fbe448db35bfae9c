"""Offline checks of the deployment files (docker/, deploy/): no Docker engine, GPU or cluster
needed. The validators run from the tools virtualenvs `make tools` builds (.venv-tools):
hadolint on the Dockerfile, yamllint on every YAML file, `docker-compose config` (Compose
1.29.2) on the compose file, kubernetes-validate (strict) on the manifests. The rest checks
that the files agree with each other and with the project: RECSYS_* names that
core/config.py reads, paths and ports the images use, pinned image tags, placeholders only
in the Secret."""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import types

import pytest
import yaml

from core.config import PROJECT_ROOT, _ENV_OVERRIDES, TritonConfig, load_config

TOOLS = PROJECT_ROOT / ".venv-tools"
DOCKER = PROJECT_ROOT / "docker"
K8S = PROJECT_ROOT / "deploy" / "k8s"
DOCKERFILE = DOCKER / "Dockerfile.serving"
COMPOSE = DOCKER / "compose.yaml"
MILVUS_VALUES = PROJECT_ROOT / "deploy" / "milvus-values.yaml"
# the project's packages, as pyproject.toml installs them
PROJECT_PACKAGES = tuple(re.findall(r'"(\w+)\*"', re.search(r'include = \[([^\]]*)\]', (
    PROJECT_ROOT / "pyproject.toml").read_text()).group(1)))
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # the oldest and newest schema sets checked
RECSYS_VARS = set(_ENV_OVERRIDES)
# Variables for other programs, by who reads them.
THIRD_PARTY_VARS = {
    "ETCD_AUTO_COMPACTION_MODE", "ETCD_AUTO_COMPACTION_RETENTION", "ETCD_QUOTA_BACKEND_BYTES",
    "ETCD_SNAPSHOT_COUNT",  # etcd
    "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY",  # MinIO
    "ETCD_ENDPOINTS", "MINIO_ADDRESS",  # Milvus
    "TF_FORCE_GPU_ALLOW_GROWTH",  # TensorFlow
}


def tool(venv: str, name: str) -> str:
    path = TOOLS / venv / "bin" / name
    if not path.is_file():
        pytest.fail(f"{path.relative_to(PROJECT_ROOT)} is missing: run `make tools` (or `make test`), "
                    "which builds the validators' virtualenvs from env/tools-lock.txt and "
                    "env/tools-compose-lock.txt", pytrace=False)
    return str(path)


def run(*command: str, env: dict | None = None, cwd=PROJECT_ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def clean_env(**extra: str) -> dict:
    """The environment of a validator: nothing of the caller's RECSYS_* or COMPOSE_*."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {**keep, **extra}


def compose_config(**variables: str) -> dict:
    out = run(tool("compose", "docker-compose"), "-f", str(COMPOSE), "config",
              env=clean_env(**variables)).stdout
    return yaml.safe_load(out)


def manifests() -> list:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [K8S / name for name in kustomization["resources"]]


def k8s_documents():
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def pod_specs():
    for path, doc in k8s_documents():
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "Job"):
            yield path, doc, spec["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield path, doc, spec["jobTemplate"]["spec"]["template"]["spec"]


def containers():
    for path, doc, pod in pod_specs():
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield path, doc, pod, container


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


# --- the validators -------------------------------------------------------------------------

def test_hadolint_passes_the_dockerfile():
    run(tool("lint", "hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE))


def test_yamllint_passes_every_yaml_file():
    files = sorted(str(p) for d in (DOCKER, PROJECT_ROOT / "deploy") for p in d.rglob("*.yaml"))
    assert len(files) >= 14
    run(tool("lint", "yamllint"), "--strict", "-c", str(PROJECT_ROOT / ".yamllint.yaml"), *files)


def test_docker_compose_config_resolves_the_compose_file():
    config = compose_config()
    assert {"etcd", "minio", "milvus", "redis", "triton", "build", "index", "materialize"} <= set(config["services"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_validate_against_the_schemas(version):
    out = run(tool("lint", "kubernetes-validate"), "--strict", "-k", version,
              *map(str, manifests())).stdout
    assert out.count("passed") == len(manifests()), out


def test_validators_reject_broken_files(tmp_path):
    """The validators are not no-ops: each one fails on a broken copy."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install requests\n")
    assert subprocess.run([tool("lint", "hadolint"), str(bad)], capture_output=True).returncode != 0
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text((K8S / "triton-deployment.yaml").read_text().replace("replicas: 2", "replicas: two"))
    result = subprocess.run([tool("lint", "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSIONS[0],
                             str(manifest)], capture_output=True, text=True)
    assert result.returncode != 0 and "replicas" in result.stdout + result.stderr
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  a:\n    image: redis:7.2.5\n    ports: 8000\n")
    assert subprocess.run([tool("compose", "docker-compose"), "-f", str(compose), "config"],
                          capture_output=True, env=clean_env()).returncode != 0


# --- the compose file against the project ---------------------------------------------------

def test_compose_environment_uses_only_known_variables():
    config = compose_config()
    feast_yaml = (PROJECT_ROOT / "feature_repo" / "feature_store.redis.yaml").read_text()
    for name, service in config["services"].items():
        for var in service.get("environment", {}):
            if var.startswith("RECSYS_"):
                assert var in RECSYS_VARS, f"{name}: {var} is not read by core/config.py"
            elif var == "FEAST_REDIS_CONNECTION_STRING":
                assert "${FEAST_REDIS_CONNECTION_STRING}" in feast_yaml
            else:
                assert var in THIRD_PARTY_VARS, f"{name}: who reads {var}?"


def test_compose_interpolation_variables_are_known_or_documented():
    text = COMPOSE.read_text()
    header = text.split("\nx-recsys-env")[0]
    for var in set(re.findall(r"\$\{([A-Z0-9_]+)", text)):
        if var.startswith("RECSYS_"):
            assert var in RECSYS_VARS, f"{var} is not read by core/config.py"
        else:
            assert var in header, f"{var} is not documented in the header of compose.yaml"


def test_index_type_is_switched_by_configuration():
    for index_type, params in (("GPU_CAGRA", '{"intermediate_graph_degree": 64, "graph_degree": 32}'),
                               ("GPU_IVF_PQ", '{"nlist": 1024, "m": 16, "nbits": 8}')):
        config = compose_config(RECSYS_MILVUS_INDEX_TYPE=index_type, RECSYS_MILVUS_INDEX_PARAMS=params)
        for service in ("triton", "index", "build"):
            env = config["services"][service]["environment"]
            assert env["RECSYS_MILVUS_INDEX_TYPE"] == index_type
            # what the server and the index job then run with
            milvus = load_config(base={}, environ={k: v for k, v in env.items() if v}).milvus
            assert milvus.index_type == index_type and milvus.index_params == yaml.safe_load(params)
    assert compose_config()["services"]["triton"]["environment"]["RECSYS_MILVUS_INDEX_TYPE"] == "HNSW"


def test_compose_paths_exist_and_are_relative():
    raw = yaml.safe_load(COMPOSE.read_text())
    stages = {args.split()[-1] for op, args in dockerfile_instructions() if op == "FROM"}
    for name, service in raw["services"].items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file() and (context / "pyproject.toml").is_file()
            assert build["target"] in stages
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/", "~")):
                assert not source.startswith(("/", "~")), f"{name}: absolute host path {source}"
                assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in raw["volumes"], f"{name}: undeclared volume {source}"


def test_containers_agree_on_paths():
    """The volumes are mounted where the image's RECSYS_* settings point, and Triton serves
    the model repository `recsys build` writes under RECSYS_WORKDIR."""
    env = dict(re.findall(r"(RECSYS_[A-Z_]+)=(\S+)", " ".join(a for op, a in dockerfile_instructions() if op == "ENV")))
    workdir, feature_repo = env["RECSYS_WORKDIR"], env["RECSYS_FEATURE_REPO"]
    repository = str(load_config(base={"workdir": workdir}, environ={}).model_repository)
    assert f"--model-repository={repository}" in DOCKERFILE.read_text()
    config = compose_config()
    for name in ("triton", "build", "index", "materialize"):
        service = config["services"][name]
        assert service["environment"]["RECSYS_WORKDIR"] == workdir
        assert service["environment"]["RECSYS_FEATURE_REPO"] == feature_repo
        targets = {v.split(":")[1] for v in service["volumes"]}
        assert {workdir, f"{feature_repo}/data"} <= targets, name
    for path, doc, pod, container in containers():
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert {workdir, f"{feature_repo}/data", f"{feature_repo}/feature_store.yaml"} <= mounts, path.name
        if doc["kind"] == "Deployment":
            assert f"--model-repository={repository}" in container["args"]
    configmap = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    assert (configmap["RECSYS_WORKDIR"], configmap["RECSYS_FEATURE_REPO"]) == (workdir, feature_repo)


def test_ports_match_triton_defaults_and_are_local():
    triton = TritonConfig()
    ports = {triton.http_port, triton.grpc_port, triton.metrics_port}
    expose = {int(p) for op, args in dockerfile_instructions() if op == "EXPOSE" for p in args.split()}
    assert expose == ports
    config = compose_config()
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"
    published = {int(str(p).split(":")[1]) for p in config["services"]["triton"]["ports"]}
    assert published == ports
    deployment = yaml.safe_load((K8S / "triton-deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == ports
    service = yaml.safe_load((K8S / "triton-service.yaml").read_text())
    assert {p["port"] for p in service["spec"]["ports"]} == ports


def test_health_checks_use_triton_endpoints():
    assert "/v2/health/ready" in DOCKERFILE.read_text().split("HEALTHCHECK", 1)[1]
    assert "/v2/health/ready" in " ".join(compose_config()["services"]["triton"]["healthcheck"]["test"])
    container = yaml.safe_load((K8S / "triton-deployment.yaml").read_text())["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_gpus_are_requested():
    config = compose_config()
    for name in ("milvus", "triton"):
        devices = config["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices), name
    assert config["services"]["milvus"]["image"].endswith("-gpu")
    container = yaml.safe_load((K8S / "triton-deployment.yaml").read_text())["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


# --- images, secrets, the Kubernetes layout -------------------------------------------------

def _pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_every_image_is_pinned():
    images = [s["image"] for s in compose_config()["services"].values()]
    images += [c["image"] for _, _, _, c in containers()]
    args = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for op, a in dockerfile_instructions() if op == "ARG")))
    images += [args[m] for m in re.findall(r"\$\{(\w+)\}", " ".join(a for op, a in dockerfile_instructions()
                                                                     if op == "FROM"))]
    values = yaml.safe_load(MILVUS_VALUES.read_text())
    images.append(f"{values['image']['all']['repository']}:{values['image']['all']['tag']}")
    assert len(images) >= 12
    for image in images:
        assert _pinned(image), f"image {image!r} has no fixed tag"
    for entry in yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"]:
        assert entry["newTag"] not in ("", "latest")
    assert "nvcr.io/nvidia/merlin/merlin-tensorflow:23.08" in images


def test_secret_holds_placeholders_only():
    secret = yaml.safe_load((K8S / "secret.yaml").read_text())
    assert "PLACEHOLDERS, NOT CREDENTIALS" in (K8S / "secret.yaml").read_text()
    data = secret["stringData"]
    assert set(data) == {"RECSYS_MILVUS_URI", "RECSYS_MILVUS_TOKEN", "FEAST_REDIS_CONNECTION_STRING",
                         "RECSYS_PIPELINE_BATCH_DB"}
    assert "CHANGE-ME" in data["RECSYS_MILVUS_TOKEN"] and "password=CHANGE-ME" in data["FEAST_REDIS_CONNECTION_STRING"]
    assert "CHANGE-ME-password@" in data["RECSYS_PIPELINE_BATCH_DB"]


def test_kubernetes_settings_are_known_variables():
    configmap = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    secret = yaml.safe_load((K8S / "secret.yaml").read_text())["stringData"]
    for var in [k for k in configmap if k != "feature_store.yaml"] + list(secret):
        assert var in RECSYS_VARS or var in THIRD_PARTY_VARS or f"${{{var}}}" in configmap["feature_store.yaml"], var
    for path, doc, pod, container in containers():
        refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in container["envFrom"]}
        assert refs == {"recsys-config", "recsys-secrets"}, path.name


def test_kustomization_lists_every_manifest():
    listed = {p.name for p in manifests()}
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    kinds = {doc["kind"] for _, doc in k8s_documents()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret", "Job", "CronJob"} <= kinds
    hpa = yaml.safe_load((K8S / "triton-hpa.yaml").read_text())
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == "recsys-triton"


def test_pods_run_as_non_root():
    for path, doc, pod, container in containers():
        assert pod["securityContext"]["runAsNonRoot"] is True, path.name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, path.name
    users = [a for op, a in dockerfile_instructions() if op == "USER"]
    assert users[-1] == "10001:10001"


# --- the Feast and Milvus configuration files -----------------------------------------------

@pytest.fixture
def feast_redis_config_class(monkeypatch):
    """Feast's Redis online store module, importable without the redis client: the project's
    environment has no `redis` package (the images add it); the config class is what is
    checked here, and the stand-in client is never called."""
    module = "feast.infra.online_stores.redis"
    if importlib.util.find_spec("redis") is None:
        stand_in = types.ModuleType("redis")
        stand_in.Redis = object
        cluster = types.ModuleType("redis.cluster")
        cluster.ClusterNode = cluster.RedisCluster = object
        monkeypatch.setitem(sys.modules, "redis", stand_in)
        monkeypatch.setitem(sys.modules, "redis.cluster", cluster)
        monkeypatch.delitem(sys.modules, module, raising=False)
        yield
        sys.modules.pop(module, None)
    else:
        yield


def test_feast_redis_configs_are_valid_feast_repo_configs(tmp_path, monkeypatch, feast_redis_config_class):
    from feast.repo_config import load_repo_config

    local = yaml.safe_load((PROJECT_ROOT / "feature_repo" / "feature_store.yaml").read_text())
    configmap = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]["feature_store.yaml"]
    monkeypatch.setenv("FEAST_REDIS_CONNECTION_STRING", "redis:6379")
    for text in ((PROJECT_ROOT / "feature_repo" / "feature_store.redis.yaml").read_text(), configmap):
        parsed = yaml.safe_load(text)
        # the same repository as feature_repo/, only the online store (and its registry) differ
        assert {k: v for k, v in parsed.items() if k not in ("online_store", "registry")} == \
               {k: v for k, v in local.items() if k not in ("online_store", "registry")}
        (tmp_path / "feature_store.yaml").write_text(text)
        config = load_repo_config(tmp_path, tmp_path / "feature_store.yaml")
        assert config.online_store.type == "redis"
        assert config.online_store.connection_string == "redis:6379"


def test_milvus_values_use_the_compose_milvus_version():
    values = yaml.safe_load(MILVUS_VALUES.read_text())
    assert values["cluster"]["enabled"] is True
    compose_tag = compose_config()["services"]["milvus"]["image"].split(":")[1]
    assert compose_tag == f"{values['image']['all']['tag']}-gpu"
    assert "tag: v2.4.15-gpu" in MILVUS_VALUES.read_text()  # the GPU switch, documented
    assert values["pulsar"]["enabled"] != values["kafka"]["enabled"]


# --- what the images install ----------------------------------------------------------------

def test_image_copies_every_package_and_imports_what_the_model_imports():
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    packages = re.search(r'include = \[([^\]]*)\]', pyproject).group(1)
    copies = " ".join(a for op, a in dockerfile_instructions() if op == "COPY")
    for package in re.findall(r'"(\w+)\*"', packages):
        assert re.search(rf"\b{package} {package}/", copies), f"the image does not copy {package}/"
        assert (PROJECT_ROOT / package / "__init__.py").is_file()
    for source in re.findall(r"COPY (?:--\S+ )?(.+) \S+$", "\n".join(f"COPY {a}" for op, a in
                                                                      dockerfile_instructions() if op == "COPY"),
                             re.M):
        for item in source.split():
            assert (PROJECT_ROOT / item).exists(), f"COPY source {item} missing"
    smoke = re.search(r'import (core\.config[^"]*)"', DOCKERFILE.read_text()).group(1)
    for module in [m.strip() for m in smoke.split(",")]:
        if module.split(".")[0] in PROJECT_PACKAGES:
            assert importlib.util.find_spec(module) is not None, module
    model = (PROJECT_ROOT / "ensemble" / "triton_model.py").read_text()
    assert "from ensemble.runner import" in model and "ensemble.runner" in smoke


def test_project_sources_parse_as_python_3_10():
    """The Merlin 23.08 image runs Python 3.10: the project must not use newer syntax."""
    files = [p for d in PROJECT_PACKAGES for p in (PROJECT_ROOT / d).glob("*.py")]
    for path in files:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
    modules = {n.names[0].name for p in files for n in ast.walk(ast.parse(p.read_text()))
               if isinstance(n, ast.Import)}
    assert "tomllib" in modules  # provided on 3.10 by docker/tomllib_compat.py


def test_requirements_added_to_the_image_are_pinned():
    lines = [ln.strip() for ln in (DOCKER / "requirements.serving.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", ln) for ln in lines), lines
    names = {ln.split("==")[0].lower() for ln in lines}
    assert {"feast", "pymilvus", "redis", "tomli"} <= names
    merlin = {"merlin-core", "merlin-systems", "merlin-models", "nvtabular", "tensorflow"}
    assert not names & merlin, "the image already has the Merlin stack"


def _constraints_module():
    spec = importlib.util.spec_from_file_location("docker_constraints", DOCKER / "constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_constraints_keep_the_image_versions_and_pin_the_rest(tmp_path):
    constraints = _constraints_module()
    image = ["merlin-core==23.8.0", "numpy==1.22.4", "tensorflow==2.12.0+nv23.6", "tomli==2.0.0",
             "pyarrow==11.0.0", "some-tool @ file:///src/some-tool", "# comment"]
    lock = ["numpy==1.23.5", "tensorflow==2.12.1", "pydantic==1.10.13", "tritonclient[http,grpc]==2.51.0",
            "SQLAlchemy==1.4.52", "pip<26.3"]
    out = constraints.constraints(image, lock, relax=["tomli"])
    assert "numpy==1.22.4" in out and "numpy==1.23.5" not in out
    assert "tensorflow==2.12.0+nv23.6" in out and "merlin-core==23.8.0" in out
    assert {"pydantic==1.10.13", "tritonclient==2.51.0", "sqlalchemy==1.4.52"} <= set(out)
    assert not any(line.startswith(("tomli", "some-tool", "pip")) for line in out)
    (tmp_path / "image.txt").write_text("\n".join(image))
    (tmp_path / "lock.txt").write_text("\n".join(lock))
    result = subprocess.run([sys.executable, str(DOCKER / "constraints.py"), str(tmp_path / "image.txt"),
                             str(tmp_path / "lock.txt"), "--requirements", str(DOCKER / "requirements.serving.txt")],
                            capture_output=True, text=True, check=True)
    assert "tomli==" not in result.stdout and "numpy==1.22.4" in result.stdout


def test_a_crashed_triton_is_restarted_by_compose_and_kubernetes():
    """One request can abort tritonserver (README, Security): the deployments restart it, and
    Kubernetes keeps other replicas serving meanwhile."""
    assert compose_config()["services"]["triton"]["restart"] in ("always", "unless-stopped")
    assert "ENTRYPOINT" in DOCKERFILE.read_text() and '["tritonserver"]' in DOCKERFILE.read_text()  # PID 1
    deployment = yaml.safe_load((K8S / "triton-deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    assert pod.get("restartPolicy", "Always") == "Always"
    container = pod["containers"][0]
    assert container["livenessProbe"]["failureThreshold"] * container["livenessProbe"]["periodSeconds"] <= 120
    hpa = yaml.safe_load((K8S / "triton-hpa.yaml").read_text())
    pdb = yaml.safe_load((K8S / "triton-pdb.yaml").read_text())
    assert hpa["spec"]["minReplicas"] >= 2 and deployment["spec"].get("replicas", 1) >= 2
    assert pdb["spec"]["minAvailable"] >= 1
