"""``recsys pipeline``: the daily job - new interaction files to a live, gated release.

Steps, in order: **import** (validate the inbox's new files, nothing imported if one is bad;
:mod:`recsys.jobs.inbox`), **train** (a production build on all the data, the imported files
included), **export** (a new release, not serving), **gate** (:mod:`recsys.jobs.gate`; a refusal
ends the run with the release built, not served), **features** (Feast apply + materialize),
**rollout** (live on the running Triton, else from its next start), **batch** (a new complete
batch run with the serving release, when ``pipeline.batch_db`` is set), **prune** (old releases;
old batch runs go when the new one completes).

Each step is recorded in ``<workdir>/pipeline/current.json`` when it finishes; a run that
failed or was killed is resumed by running the command again (from the first unfinished step,
on the same files). Before the features step (so also when the gate refuses), the serving
release, its collection, Feast's online store and the current batch run are the ones before
the run; training has rewritten Feast's offline source in the repository by then (what the
next ``recsys features`` would load). From the features step on, the serving release reads the
new build's feature rows until the rollout. One run at a time (a lock file).
"""
from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Config
from recsys.jobs import gate, inbox, releases, stack

STEPS = ("import", "train", "export", "gate", "features", "rollout", "batch", "prune")
KEEP_RECORDS = 30


class PipelineError(RuntimeError):
    """A step failed; the run resumes from it next time."""


@dataclass
class Outcome:
    """What a run did, for the summary: ``status`` is ``done``, ``nothing new``, ``refused``."""

    run_id: str
    status: str
    files: list[str] = field(default_factory=list)
    interactions: int = 0
    release: int | None = None
    serving: int | None = None
    steps: dict[str, dict] = field(default_factory=dict)
    gate: str = ""
    resumed: bool = False

    def summary(self) -> str:
        head = {"done": f"release {self.serving} serves",
                "nothing new": f"no new interaction files; release {self.serving} serves unchanged",
                "refused": f"release {self.release} built but NOT rolled out (quality gate); "
                           f"release {self.serving} serves"}[self.status]
        lines = [f"pipeline run {self.run_id}" + (" (resumed)" if self.resumed else "") + f": {head}"]
        if self.files:
            lines.append(f"  imported  {len(self.files)} file(s), {self.interactions:,} interactions: "
                         + ", ".join(self.files))
        for name in STEPS:
            step = self.steps.get(name)
            if step:
                lines.append(f"  {name:9} {step.get('seconds', 0.0):6.1f}s  {step.get('detail', '')}")
        if self.gate:
            lines += ["  gate:"] + [f"    {line}" for line in self.gate.splitlines()]
        total = sum(step.get("seconds", 0.0) for step in self.steps.values())
        lines.append(f"  total {total:.0f}s")
        return "\n".join(lines)


def folder(config: Config) -> Path:
    return config.workdir / "pipeline"


@contextmanager
def _one_at_a_time(config: Config):
    folder(config).mkdir(parents=True, exist_ok=True)
    with open(folder(config) / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError("another `recsys pipeline` run is in progress in this work directory") from None
        yield


def _save(config: Config, run: dict) -> None:
    path = folder(config) / "current.json"
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(run, indent=2))
    scratch.replace(path)


def _finish(config: Config, run: dict) -> None:
    """Keep the run's record under ``runs/`` (the newest KEEP_RECORDS) and end it."""
    runs = folder(config) / "runs"
    runs.mkdir(exist_ok=True)
    (runs / f"{run['id']}.json").write_text(json.dumps(run, indent=2))
    (folder(config) / "current.json").unlink(missing_ok=True)
    for old in sorted(runs.glob("*.json"))[:-KEEP_RECORDS]:
        old.unlink()


def run_pipeline(config: Config, force: bool = False, retrain: bool = False, say=print) -> Outcome:
    """Run (or resume) the pipeline; ``say`` gets a line as each step starts."""
    with _one_at_a_time(config):
        current = folder(config) / "current.json"
        resumed = current.is_file()
        if resumed:
            run = json.loads(current.read_text())
        else:
            new, repeated = inbox.validate(config, inbox.pending(config))  # a bad file stops here
            if not new and not retrain:
                if repeated:
                    inbox.import_files(config, [], repeated)
                return Outcome("-", "nothing new", serving=releases.serving_release(config))
            run = {"id": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), "force": force,
                   "files": [str(new_file.path) for new_file in new], "repeated": [str(p) for p in repeated],
                   "steps": {}, "release": None, "status": "running"}
            _save(config, run)
        files = [Path(p) for p in run["files"]]
        outcome = Outcome(run["id"], "done", [p.name for p in files], resumed=resumed)
        force = force or run.get("force", False)
        for name in STEPS:
            if run.get("status") == "refused":  # also a refused run cut off before it was filed
                break
            if name in run["steps"]:
                continue
            say(f"== {name}")
            started = time.perf_counter()
            try:
                detail = _STEP[name](config, run, force, outcome)
            except Exception as exc:
                run["status"] = f"failed at {name}"
                _save(config, run)
                served = ("the serving release and the online store are as before the run"
                          if STEPS.index(name) < STEPS.index("features") else
                          f"the serving release is {releases.serving_release(config)}; the online store may "
                          f"hold the new build's rows")
                raise PipelineError(f"step {name} failed: {exc}. {served}; run `recsys pipeline` again to "
                                    f"resume from this step") from exc
            run["steps"][name] = {"seconds": round(time.perf_counter() - started, 2), "detail": detail}
            _save(config, run)
        outcome.steps = run["steps"]
        outcome.release = run["release"]
        outcome.interactions = run.get("interactions", 0)
        outcome.status = "refused" if run.get("status") == "refused" else "done"
        outcome.serving = releases.serving_release(config)
        if outcome.status != "refused":
            run["status"] = "done"
        _finish(config, run)
        return outcome


def _import(config: Config, run: dict, force: bool, outcome: Outcome) -> str:
    paths = [Path(p) for p in run["files"] if Path(p).exists()]
    new, repeated = inbox.validate(config, paths)
    count = inbox.import_files(config, new, repeated + [Path(p) for p in run["repeated"]])
    run["interactions"] = run.get("interactions", 0) + count
    return f"{len(run['files'])} file(s), {run['interactions']:,} interactions into {config.imported_dir}"


def _train(config: Config, run: dict, force: bool, outcome: Outcome) -> str:
    artifacts = stack.train(config, production=True)
    report = json.loads(artifacts.report.read_text())
    return f"{report['interactions']:,} interactions, {report['users']:,} users, {report['items']:,} items"


def _export(config: Config, run: dict, force: bool, outcome: Outcome) -> str:
    run["release"] = stack.export(config)
    return f"release {run['release']} in {config.model_repository}"


def _gate(config: Config, run: dict, force: bool, outcome: Outcome) -> str:
    verdict = gate.check(config, run["release"])
    outcome.gate = verdict.table()
    if verdict.passed:
        return verdict.reasons[-1]
    if force:
        outcome.gate += f"\n--force: release {run['release']} is rolled out although the gate refused it"
        return "refused, overridden by --force"
    run["status"] = "refused"
    return verdict.reasons[-1]


def _features(config: Config, run: dict, force: bool, outcome: Outcome) -> str:
    stack.load_features(config)
    return f"feast apply + materialize-incremental in {config.feature_repo}"


def _rollout(config: Config, run: dict, force: bool, outcome: Outcome) -> str:
    url = releases.live_triton(config)
    with stack.milvus_for_job(config):
        releases.rollout(config, run["release"], url)
    return f"release {run['release']} serves" + (f" (live on Triton {url})" if url else
                                                  " (from the next `recsys serve`; no Triton runs)")


def _batch(config: Config, run: dict, force: bool, outcome: Outcome) -> str:
    if not config.pipeline.batch_db:
        return "skipped (pipeline.batch_db is not set)"
    from recsys.jobs.batch import run_batch
    from recsys.jobs.batch_options import BatchOptions

    result = run_batch(config, BatchOptions(k=config.pipeline.batch_k, db_url=config.pipeline.batch_db,
                                            keep_runs=config.pipeline.keep_runs,
                                            progress=config.training.progress))
    return (f"run {result.run_id}: {result.users_total:,} users x {result.k} with release {result.release}"
            + (f"; runs {', '.join(result.pruned)} deleted" if result.pruned else ""))


def _prune(config: Config, run: dict, force: bool, outcome: Outcome) -> str:
    with stack.milvus_for_job(config):
        deleted = releases.prune(config, config.release.keep)
    return f"releases {', '.join(map(str, deleted))} deleted" if deleted else "nothing to prune"


_STEP = {"import": _import, "train": _train, "export": _export, "gate": _gate, "features": _features,
         "rollout": _rollout, "batch": _batch, "prune": _prune}
