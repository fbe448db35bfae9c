import pytest

from recsys.config import load_config


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
