"""What every serving benchmark starts from: a built work directory (``make demo`` leaves one),
its servers on free loopback ports."""
from __future__ import annotations

import argparse

from core.config import Config, load_config
from recsys.jobs import stack
from recsys.runtime.servers import free_port


def add_workdir_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="artifacts")
    parser.add_argument("--feature-repo", help="the work directory's Feast repository (default ./feature_repo)")


def built_workdir(args: argparse.Namespace) -> Config:
    """The configuration of ``args.workdir`` (which must hold trained artifacts) with Milvus and
    Triton on free ports, so a benchmark runs beside anything else on the machine."""
    config = load_config(overrides={
        "workdir": args.workdir,
        **({"feature_repo": args.feature_repo} if args.feature_repo else {}),
        "milvus": {"port": free_port()},
        "triton": {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}})
    stack.require_artifacts(config)
    return config
