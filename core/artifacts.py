"""The path contract between training and serving: where the offline job writes each artifact
under the work directory, and where every reader (export, jobs, status, catalogue) finds it.
No heavy imports, so the CLI's parent process can know paths without TensorFlow."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import Config


@dataclass
class Artifacts:
    """Paths of everything the offline job produces."""

    root: Path

    @classmethod
    def of(cls, config: Config) -> "Artifacts":
        return cls(config.workdir)

    interactions = property(lambda self: self.root / "data" / "interactions.parquet")
    train_interactions = property(lambda self: self.root / "data" / "train.parquet")
    test_interactions = property(lambda self: self.root / "data" / "test.parquet")
    users = property(lambda self: self.root / "data" / "users.parquet")
    items = property(lambda self: self.root / "data" / "items.parquet")
    features = property(lambda self: self.root / "data" / "features.json")
    popular_items = property(lambda self: self.root / "data" / "popular_items.parquet")
    user_id_map = property(lambda self: self.root / "data" / "user_id_map.parquet")
    item_id_map = property(lambda self: self.root / "data" / "item_id_map.parquet")
    user_workflow = property(lambda self: self.root / "workflows" / "user")
    item_workflow = property(lambda self: self.root / "workflows" / "item")
    query_tower = property(lambda self: self.root / "models" / "query_tower")
    item_tower = property(lambda self: self.root / "models" / "item_tower")
    ranking_model = property(lambda self: self.root / "models" / "dlrm")
    item_vectors = property(lambda self: self.root / "models" / "item_vectors.parquet")
    ordering = property(lambda self: self.root / "models" / "ordering.json")
    report = property(lambda self: self.root / "training_report.json")
