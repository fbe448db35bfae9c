"""What long offline work shows while it runs: a bar per training epoch (validation epochs
are the tuning trials), per index insert and per Feast materialization (``feast``'s own bars,
forwarded by ``recsys.jobs.featurestore``), on a terminal only (tqdm, on stderr), and one
line per finished stage with its counts and time (stdout). ``TrainingConfig.progress`` (``recsys
--no-progress``) turns the bars off; stage lines stay."""
from __future__ import annotations

import sys
from collections.abc import Iterable


def bar(iterable: Iterable, total: int, description: str, enabled: bool = True):
    """``iterable`` with a progress bar while it is consumed, when ``enabled`` and stderr is a
    terminal; the plain iterable otherwise."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


def stage(name: str, detail: str, seconds: float | None = None) -> None:
    """One line for a finished stage: ``name: detail (12.3s)``."""
    took = f" ({seconds:.1f}s)" if seconds is not None else ""
    print(f"   {name}: {detail}{took}", flush=True)
