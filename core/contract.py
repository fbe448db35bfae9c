"""What the served models promise their callers and what the layers agree on: names shared
by training, the index and serving."""
from __future__ import annotations

CATEGORY_FEATURE = "item_category"  # the item feature stored in the index's category field (filter pushdown)
