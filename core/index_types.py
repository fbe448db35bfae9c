"""The rules of Milvus index types the configuration is checked against: the parameters each
type gets by default, what the GPU types accept, and the top-k caps."""
from __future__ import annotations

import logging
from typing import Any

LOG = logging.getLogger(__name__)

# Build and search parameters an index type gets when it is chosen without its own (e.g. only
# RECSYS_MILVUS_INDEX_TYPE is set): parameters of one type mean nothing to another. HNSW's are
# the defaults of MilvusConfig; the IVF ones are those of docs/benchmarks.md (nlist must not
# exceed the number of items). GPU_* types need a GPU build of Milvus (milvusdb/milvus:*-gpu).
INDEX_DEFAULTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_PQ": ({"nlist": 1024, "m": 16, "nbits": 8}, {"nprobe": 32}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 200}),
    "GPU_BRUTE_FORCE": ({}, {}),
    "GPU_IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "GPU_IVF_PQ": ({"nlist": 1024, "m": 16, "nbits": 8}, {"nprobe": 32}),
    # itopk_size left out: Milvus then sizes it to the search limit, which varies per request.
    "GPU_CAGRA": ({"intermediate_graph_degree": 64, "graph_degree": 32}, {}),
}

# GPU index types: the parameters Milvus 2.4 documents for them (build, search) and the largest
# top-k (search limit) it accepts. Where Milvus versions document different caps (GPU_IVF_FLAT:
# 256, later 2048) the smaller one is used.
GPU_INDEXES: dict[str, tuple[frozenset, frozenset, int]] = {
    "GPU_CAGRA": (frozenset({"intermediate_graph_degree", "graph_degree", "build_algo",
                             "cache_dataset_on_device", "adapt_for_cpu"}),
                  frozenset({"itopk_size", "search_width", "min_iterations", "max_iterations",
                             "team_size", "ef"}), 1024),
    "GPU_IVF_PQ": (frozenset({"nlist", "m", "nbits", "cache_dataset_on_device"}),
                   frozenset({"nprobe"}), 1024),
    "GPU_IVF_FLAT": (frozenset({"nlist", "cache_dataset_on_device"}), frozenset({"nprobe"}), 256),
    "GPU_BRUTE_FORCE": (frozenset(), frozenset(), 1024),
}
MILVUS_MAX_LIMIT = 16_384  # Milvus' own cap on top-k (QueryMilvus' default max_limit)



def _positive_int(index_type: str, name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
        bounds = f"in [{low}, {high}]" if high else f">= {low}"
        raise ValueError(f"milvus: {index_type} parameter {name} must be an integer {bounds}, got {value!r}")
    return value


def check_gpu_params(index_type: str, index_params: dict, search_params: dict,
                      build_keys: frozenset, search_keys: frozenset) -> None:
    """Reject parameters a GPU index does not take (e.g. HNSW's ``M`` left over) and values
    outside the ranges Milvus documents."""
    for kind, given, known in (("index_params", index_params, build_keys),
                               ("search_params", search_params, search_keys)):
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"milvus.{kind} {unknown} are not {index_type} parameters "
                             f"(it takes: {', '.join(sorted(known)) or 'none'})")
    if index_type == "GPU_CAGRA":
        inter = _positive_int(index_type, "intermediate_graph_degree",
                              index_params.get("intermediate_graph_degree", 128))
        graph = _positive_int(index_type, "graph_degree", index_params.get("graph_degree", 64))
        if graph >= inter:
            raise ValueError(f"milvus: GPU_CAGRA graph_degree ({graph}) must be smaller than "
                             f"intermediate_graph_degree ({inter})")
        algo = str(index_params.get("build_algo", "IVF_PQ")).upper()
        if algo not in ("IVF_PQ", "NN_DESCENT"):
            raise ValueError(f"milvus: GPU_CAGRA build_algo must be IVF_PQ or NN_DESCENT, got {algo!r}")
        for name in ("itopk_size", "search_width"):
            if name in search_params:
                _positive_int(index_type, name, search_params[name])
    elif index_type in ("GPU_IVF_PQ", "GPU_IVF_FLAT"):
        nlist = _positive_int(index_type, "nlist", index_params.get("nlist", 128), 1, 65536)
        if "nprobe" in search_params:
            _positive_int(index_type, "nprobe", search_params["nprobe"], 1, nlist)
        if index_type == "GPU_IVF_PQ":
            _positive_int(index_type, "nbits", index_params.get("nbits", 8), 1, 16)
            if "m" in index_params:
                _positive_int(index_type, "m", index_params["m"])


def search_limit_cap(config) -> int:
    """The largest limit QueryMilvus can send: retrieval_k plus the user's history (excluded
    items), rounded up to a power of two, at most Milvus' own cap."""
    needed = config.serving.retrieval_k + (config.training.max_history if config.serving.exclude_seen else 0)
    return min(1 << max(needed - 1, 1).bit_length(), MILVUS_MAX_LIMIT)


def check_gpu_limits(config) -> None:
    """The checks of a GPU index that involve other sections: top-k caps, the embedding size."""
    index_type = config.milvus.index_type.upper()
    if index_type not in GPU_INDEXES:
        return
    cap = GPU_INDEXES[index_type][2]
    retrieval_k = config.serving.retrieval_k
    if retrieval_k > cap:
        raise ValueError(f"serving.retrieval_k = {retrieval_k} exceeds the top-k limit of "
                         f"{index_type} ({cap}); lower it or use a CPU index type")
    search = config.milvus.search_params
    if index_type == "GPU_CAGRA" and "itopk_size" in search:
        # Milvus: top-k <= max(ceil(itopk_size / 32), search_width) * 32, and itopk_size >= top-k.
        itopk = int(search["itopk_size"])
        if itopk < retrieval_k:
            raise ValueError(f"milvus.search_params.itopk_size = {itopk} must be >= serving.retrieval_k "
                             f"({retrieval_k}); leave it out to let Milvus size it to each search")
    m = config.milvus.index_params.get("m")
    if index_type == "GPU_IVF_PQ" and m and config.training.embedding_dim % int(m):
        raise ValueError(f"milvus.index_params.m = {m} must divide training.embedding_dim "
                         f"({config.training.embedding_dim})")
    worst = search_limit_cap(config)
    if worst > cap:
        LOG.warning("%s caps top-k at %d, but a user with %d history items would need a search "
                    "limit of %d (retrieval_k + history, rounded up to a power of two): retrieval "
                    "is capped at %d, so such users get fewer new candidates (the rest filled "
                    "with popular items); keep retrieval_k + training.max_history <= %d to avoid it",
                    index_type, cap, config.training.max_history, worst, cap, cap)
