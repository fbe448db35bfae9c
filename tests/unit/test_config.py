import pytest

from core.config import load_config


def test_defaults_env_and_overrides(tmp_path):
    toml = tmp_path / "recsys.toml"
    toml.write_text('[milvus]\nindex_type = "IVF_FLAT"\n[serving]\ntop_k = 20\n')
    config = load_config(toml, environ={"RECSYS_MILVUS_URI": "http://milvus.example:19530"},
                         overrides={"serving": {"retrieval_k": 200}})
    assert config.milvus.index_type == "IVF_FLAT"
    assert config.serving.top_k == 20 and config.serving.retrieval_k == 200
    assert config.milvus.endpoint == "http://milvus.example:19530"
    assert load_config(base={}, environ={}).milvus.endpoint == "http://127.0.0.1:19530"


def test_unknown_keys_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown configuration key 'topk'"):
        load_config(base={"serving": {"topk": 3}}, environ={})


def test_milvus_token_from_file_hidden_from_repr(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("root:s3cret-value\n")
    config = load_config(base={"milvus": {"token_file": str(token_file), "auth": True}}, environ={})
    assert config.milvus.token == "root:s3cret-value"
    assert "s3cret-value" not in repr(config)
    from_env = load_config(base={}, environ={"RECSYS_MILVUS_TOKEN_FILE": str(token_file)})
    assert from_env.milvus.token == "root:s3cret-value"


def test_milvus_auth_needs_a_root_token(tmp_path):
    with pytest.raises(ValueError, match="milvus.auth needs milvus.token"):
        load_config(base={"milvus": {"auth": True}}, environ={})
    with pytest.raises(ValueError, match="milvus.token_file .*missing"):
        load_config(base={"milvus": {"token_file": str(tmp_path / "missing")}}, environ={})


def test_locked_down_defaults():
    config = load_config(base={}, environ={})
    assert config.milvus.host == "127.0.0.1" and config.triton.host == "127.0.0.1"
    assert config.milvus.private_network
    assert "hunter2" not in repr(load_config(base={}, environ={"RECSYS_TRITON_ADMIN_KEY": "hunter2"}))


def test_feast_configuration_and_triton_replicas_by_environment(tmp_path):
    toml = tmp_path / "recsys.toml"
    toml.write_text('[triton]\nhttp_endpoints = ["10.0.0.1:8000", "10.0.0.2:8000"]\n')
    config = load_config(toml, environ={"RECSYS_FEATURE_STORE_YAML": "feature_store.redis.yaml",
                                        "RECSYS_TRITON_GRPC_ENDPOINTS": "a:8001, b:8001,"})
    assert config.feature_store_file == config.feature_repo / "feature_store.redis.yaml"
    assert config.triton.client_endpoints("http") == ["10.0.0.1:8000", "10.0.0.2:8000"]
    assert config.triton.client_endpoints("grpc") == ["a:8001", "b:8001"]
    default = load_config(base={}, environ={})
    assert default.feature_store_file.name == "feature_store.yaml"
    assert default.triton.client_endpoints("grpc") == ["127.0.0.1:8001"]
