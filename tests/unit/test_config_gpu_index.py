"""Milvus index types chosen by configuration: per-type parameters and the GPU index checks."""
import logging

import pytest

from core.config import INDEX_DEFAULTS, load_config


def test_defaults_are_unchanged():
    milvus = load_config(base={}, environ={}).milvus
    assert milvus.index_type == "HNSW"
    assert milvus.index_params == {"M": 16, "efConstruction": 200}
    assert milvus.search_params == {"ef": 200}


@pytest.mark.parametrize("index_type", ["GPU_CAGRA", "GPU_IVF_PQ", "IVF_FLAT", "GPU_BRUTE_FORCE"])
def test_type_from_env_gets_its_own_parameters(index_type):
    milvus = load_config(base={}, environ={"RECSYS_MILVUS_INDEX_TYPE": index_type}).milvus
    assert milvus.index_type == index_type
    assert (milvus.index_params, milvus.search_params) == INDEX_DEFAULTS[index_type]


def test_exported_hnsw_params_are_dropped_when_env_switches_the_type():
    # serving: serving.json (written at export, HNSW) + RECSYS_* variables of the deployment
    base = {"milvus": {"index_type": "HNSW", "index_params": {"M": 16, "efConstruction": 200},
                       "search_params": {"ef": 200}, "collection": "items"}}
    milvus = load_config(base=base, environ={"RECSYS_MILVUS_INDEX_TYPE": "GPU_CAGRA"}).milvus
    assert milvus.index_params == {"intermediate_graph_degree": 64, "graph_degree": 32}
    assert milvus.search_params == {}
    assert milvus.collection == "items"
    same = load_config(base=base, environ={"RECSYS_MILVUS_INDEX_TYPE": "hnsw"}).milvus
    assert same.search_params == {"ef": 200}


def test_params_from_env_are_json():
    env = {"RECSYS_MILVUS_INDEX_TYPE": "GPU_IVF_PQ",
           "RECSYS_MILVUS_INDEX_PARAMS": '{"nlist": 256, "m": 8, "nbits": 8}',
           "RECSYS_MILVUS_SEARCH_PARAMS": '{"nprobe": 16}'}
    milvus = load_config(base={}, environ=env).milvus
    assert milvus.index_params == {"nlist": 256, "m": 8, "nbits": 8}
    assert milvus.search_params == {"nprobe": 16}
    with pytest.raises(ValueError, match="RECSYS_MILVUS_SEARCH_PARAMS must be a JSON object"):
        load_config(base={}, environ={"RECSYS_MILVUS_SEARCH_PARAMS": "nprobe=16"})


def test_toml_type_without_params_gets_its_defaults(tmp_path):
    toml = tmp_path / "recsys.toml"
    toml.write_text('[milvus]\nindex_type = "GPU_CAGRA"\nsearch_params = { itopk_size = 128 }\n')
    milvus = load_config(toml, environ={}).milvus
    assert milvus.index_params == INDEX_DEFAULTS["GPU_CAGRA"][0]
    assert milvus.search_params == {"itopk_size": 128}


@pytest.mark.parametrize("milvus, message", [
    ({"index_type": "GPU_CAGRA", "index_params": {"M": 16, "efConstruction": 200}},
     r"\['M', 'efConstruction'\] are not GPU_CAGRA parameters"),
    ({"index_type": "GPU_CAGRA", "index_params": {"intermediate_graph_degree": 32, "graph_degree": 64}},
     "graph_degree .64. must be smaller than intermediate_graph_degree .32."),
    ({"index_type": "GPU_CAGRA", "index_params": {"build_algo": "HNSW"}}, "build_algo must be"),
    ({"index_type": "GPU_CAGRA", "search_params": {"itopk_size": 64}},
     r"itopk_size = 64 must be >= serving.retrieval_k \(100\)"),
    ({"index_type": "GPU_CAGRA", "search_params": {"search_width": 0}}, "search_width must be"),
    ({"index_type": "GPU_IVF_PQ", "search_params": {"ef": 200}}, r"\['ef'\] are not GPU_IVF_PQ"),
    ({"index_type": "GPU_IVF_PQ", "index_params": {"nlist": 0}}, r"nlist must be an integer in \[1, 65536\]"),
    ({"index_type": "GPU_IVF_PQ", "index_params": {"nlist": 64}, "search_params": {"nprobe": 128}},
     r"nprobe must be an integer in \[1, 64\]"),
    ({"index_type": "GPU_IVF_PQ", "index_params": {"m": 12}}, "m = 12 must divide training.embedding_dim"),
    ({"index_type": "GPU_IVF_PQ", "index_params": {"nbits": 17}}, "nbits must be"),
    ({"index_type": "GPU_BRUTE_FORCE", "search_params": {"ef": 10}}, "it takes: none"),
])
def test_gpu_parameters_are_checked(milvus, message):
    with pytest.raises(ValueError, match=message):
        load_config(base={"milvus": milvus}, environ={})


@pytest.mark.parametrize("index_type, cap", [("GPU_CAGRA", 1024), ("GPU_IVF_PQ", 1024), ("GPU_IVF_FLAT", 256)])
def test_retrieval_k_above_the_gpu_top_k_cap_is_refused(index_type, cap):
    base = {"milvus": {"index_type": index_type}, "serving": {"retrieval_k": cap + 1}}
    with pytest.raises(ValueError, match=f"exceeds the top-k limit of {index_type} \\({cap}\\)"):
        load_config(base=base, environ={})
    load_config(base={**base, "serving": {"retrieval_k": cap}, "training": {"max_history": 0}}, environ={})


def test_long_histories_beyond_the_cap_are_warned_about(caplog):
    base = {"milvus": {"index_type": "GPU_CAGRA"}, "serving": {"retrieval_k": 100}}
    with caplog.at_level(logging.WARNING, logger="core.config"):
        load_config(base={**base, "training": {"max_history": 900}}, environ={})
    assert not caplog.records  # 100 + 900 -> limit 1024: fits
    with caplog.at_level(logging.WARNING, logger="core.config"):
        load_config(base={**base, "training": {"max_history": 1000}}, environ={})
    assert "limit of 2048" in caplog.text and "capped at 1024" in caplog.text and "<= 1024" in caplog.text


def test_cpu_index_types_are_not_restricted():
    config = load_config(base={"milvus": {"index_type": "IVF_PQ", "index_params": {"nlist": 64, "m": 12}},
                               "serving": {"retrieval_k": 5000}}, environ={})
    assert config.milvus.index_params == {"nlist": 64, "m": 12}
