"""The quality gate: a release goes live only if it is not worse than the one serving.

Each release records, from its build's selection run, NDCG@10, Recall@10 and HitRate@10 of its
cascade's order (retrieval top ``retrieval_k``, ranker, blend; seen items excluded) on the
validation split of the data it was built from (:mod:`training.tuning`). A rollout is refused
when any of them is below the serving release's by more than ``release.max_regression`` of the
serving figure. A release without figures (built with ``training.validate = false``) cannot be
judged and passes, saying so; so does the first release.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.config import Config
from recsys.jobs import releases
from recsys.jobs.releases import Release

METRICS = (("ndcg@10", "NDCG@10"), ("recall@10", "Recall@10"), ("hit_rate@10", "HitRate@10"))


@dataclass
class Verdict:
    """What the gate decided for ``candidate`` against ``serving``, and why."""

    passed: bool
    candidate: Release
    serving: Release | None
    reasons: list[str] = field(default_factory=list)
    max_regression: float = 0.0

    def table(self) -> str:
        """Both releases' figures side by side, with the change and what failed."""
        if self.serving is None or not (self.candidate.validation and self.serving.validation):
            return "\n".join(self.reasons)
        old, new = self.serving, self.candidate
        lines = [f"{'':14}{'release ' + str(old.id) + ' (serving)':>22}{'release ' + str(new.id):>14}{'change':>10}"]
        for key, label in METRICS:
            before, after = float(old.validation[key]), float(new.validation[key])
            change = (after - before) / before if before else 0.0
            flag = "  below the allowed" if _regressed(before, after, self.max_regression) else ""
            lines.append(f"{label:14}{before:>22.4f}{after:>14.4f}{change:>+10.1%}{flag}")
        lines.append(f"{'trained on':14}{old.interactions:>22,}{new.interactions:>14,}  interactions")
        lines.append(f"{'validated on':14}{int(old.validation.get('users', 0)):>22,}"
                     f"{int(new.validation.get('users', 0)):>14,}  users")
        return "\n".join(lines + self.reasons)


def _regressed(before: float, after: float, margin: float) -> bool:
    return after < before * (1.0 - margin)


def check(config: Config, release: int) -> Verdict:
    """Whether ``release`` may replace the serving release (see the module docstring)."""
    candidate = releases.get(config, release)
    serving_id = releases.serving_release(config)
    margin = config.release.max_regression
    if serving_id is None or serving_id == release:
        return Verdict(True, candidate, None, [f"release {release}: nothing else serves; not gated"], margin)
    serving = releases.get(config, serving_id)
    missing = [r.id for r in (serving, candidate) if not r.validation]
    if missing:
        return Verdict(True, candidate, serving,
                       [f"not gated: release(s) {missing} have no validation figures "
                        f"(built with training.validate = false)"], margin)
    worse = [label for key, label in METRICS
             if _regressed(float(serving.validation[key]), float(candidate.validation[key]), margin)]
    if worse:
        return Verdict(False, candidate, serving,
                       [f"refused: release {release}'s {', '.join(worse)} fall more than {margin:.0%} below "
                        f"serving release {serving_id}'s (release.max_regression); release {release} stays "
                        f"built, not served (`recsys release rollout {release} --force` serves it anyway)"], margin)
    return Verdict(True, candidate, serving,
                   [f"passed: no figure of release {release} is more than {margin:.0%} below serving "
                    f"release {serving_id}'s"], margin)
