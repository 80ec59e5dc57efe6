"""The Ray driver of ``simgen batch``: one Ray task per scene stage, skipped when its record says done.

The driver never moves scene data: each task reads and writes folders under ``OUT/`` (a path every node
of the cluster sees; docs/cluster.md) and returns a small JSON-ready dict. Ray does the scheduling (its
tasks declare ``num_cpus`` / ``num_gpus`` / ``memory``); the driver only keeps each scene's stages in
order, retries a failed stage, and writes the report after every scene that finishes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simgen.batch import records
from simgen.batch.manifest import OPTIONAL_INPUTS, REQUIRES, Manifest, ScenePlan
from simgen.batch.report import write_report
from simgen.batch.stages import run_stage
from simgen.interrupts import postpone_forced_exit

LOCK_FILE = ".batch.lock"
#: Ray's object store holds only the tasks' small result dicts here (data moves as folders), so the
#: embedded instance asks for Ray's minimum-sized store instead of 30 % of the machine's memory.
OBJECT_STORE_BYTES = 128 * 2**20


class BatchError(RuntimeError):
    """The batch cannot run (Ray missing or unreachable, output folder locked); the message says why."""


@dataclass(frozen=True)
class BatchConfig:
    """Settings of :func:`run_batch` (the ``simgen batch`` flags)."""

    address: str | None = None
    """Ray cluster to join (``auto``, ``ray://host:10001``, ``host:6379``); None starts an embedded one"""
    num_cpus: int | None = None
    """CPUs of the embedded Ray instance (default: all of this machine's)"""
    num_gpus: int | None = None
    """GPUs of the embedded Ray instance (default: those Ray detects)"""
    retries: int = 1
    """times a failed stage is tried again before its scene is recorded as failed"""
    force: bool = False
    """redo every stage, ignoring the completion records"""
    progress: bool = True
    """show the progress bar (scenes done / running / failed, ETA)"""
    poll_seconds: float = 0.5
    """how often the driver wakes up to look at finished tasks and Ctrl-C"""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {self.num_cpus}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError(f"num_gpus must be >= 0, got {self.num_gpus}")


@dataclass
class SceneState:
    """What the driver knows about one scene while the batch runs."""

    plan: ScenePlan
    index: int = 0  # next stage to look at, in plan.stages
    status: str = "pending"  # pending | running | done | failed | interrupted
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> status, seconds, attempts
    fingerprints: dict[str, str] = field(default_factory=dict)
    attempts: int = 0  # of the running stage
    dirty: bool = False  # a stage ran again: every later stage runs again too
    error: dict[str, Any] | None = None


@dataclass
class BatchResult:
    out_dir: Path
    report: dict[str, Any]
    interrupted: bool = False

    @property
    def failed(self) -> list[str]:
        return [s["name"] for s in self.report["scenes"] if s["status"] == "failed"]


# ----------------------------------------------------------------------------- Ray set-up
def _ray():
    try:
        import ray
    except ImportError:
        raise BatchError(
            "simgen batch needs Ray: pip install 'simgen[batch]' (or pip install 'ray>=2.40')"
        ) from None
    return ray


@contextlib.contextmanager
def ray_session(cfg: BatchConfig) -> Iterator[Any]:
    """Ray connected for the batch: the caller's instance when one is initialised (tests, notebooks), a
    cluster at ``cfg.address``, or an embedded instance sized to this machine. Only what this function
    started is shut down, on every way out (Ctrl-C included)."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if cfg.address:
        try:
            # Every node imports its own installed simgen (docs/cluster.md): nothing is shipped.
            ray.init(address=cfg.address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise BatchError(
                f"cannot join the Ray cluster at {cfg.address!r}: {e} (is it running, and does this machine "
                "have its authentication token? docs/cluster.md, 'Joining a cluster')"
            ) from None
    else:
        # The embedded instance's workers inherit this process's environment (PYTHONPATH included).
        ray.init(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, object_store_memory=OBJECT_STORE_BYTES, **kw)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (SLURM preemption, ``kill``, Kubernetes pod deletion) stops the batch as Ctrl-C does."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """One batch at a time per output folder (two drivers would run the same stages twice)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise BatchError(
                f"{out_dir}: another simgen batch is writing here ({f.read().strip() or 'unknown process'}); "
                f"wait for it or remove {out_dir / LOCK_FILE} if no batch runs"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def stage_resources(plan: ScenePlan, stage: str, gpus: bool) -> dict[str, Any]:
    """Ray ``.options()`` of a stage's task: declared CPUs, GPUs (the neural build and the Gaussian stage
    get one when the cluster has GPUs, unless the manifest says otherwise) and memory."""
    res = plan.resources[stage]
    wants_gpu = stage == "gaussians" or (stage == "build" and plan.method == "neural")
    num_gpus = res.num_gpus if res.num_gpus is not None else (1 if wants_gpu and gpus else 0)
    opts: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": num_gpus}
    if res.memory_gb > 0:
        opts["memory"] = int(res.memory_gb * 2**30)
    return opts


def _check_feasible(ray, plans: tuple[ScenePlan, ...], gpus: bool) -> None:
    """Refuse a stage whose declared resources no node has: Ray would queue it forever."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for plan in plans:
        for stage in plan.stages:
            opts = stage_resources(plan, stage, gpus)
            want = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], "memory": opts.get("memory", 0)}
            if not any(all(node.get(k, 0) >= v for k, v in want.items() if v) for node in nodes):
                have = ", ".join(
                    f"{k} {node.get(k, 0) / (2**30 if k == 'memory' else 1):.1f}"
                    for node in nodes[:1]
                    for k in ("CPU", "GPU", "memory")
                )
                raise BatchError(
                    f"scene {plan.name}, stage {stage}: asks for num_cpus={opts['num_cpus']}, "
                    f"num_gpus={opts['num_gpus']}, memory_gb={want['memory'] / 2**30:.1f} but no Ray node has "
                    f"that ({have} GiB); lower resources.{stage} in the manifest"
                )


# ----------------------------------------------------------------------------- fingerprints
def stage_inputs(plan: ScenePlan, stage: str, out_dir: Path, done: dict[str, str]) -> dict[str, Any]:
    """What a stage's fingerprint covers besides its settings: its source folder (first stage) and the
    fingerprints of the stages it reads from."""
    inputs: dict[str, Any] = {}
    if stage == "import":
        inputs["source"] = records.folder_state(Path(plan.source))
    elif stage == "validate" and not plan.dataset:
        inputs["scene"] = records.folder_state(plan.scene_dir(out_dir), ("transforms.json", "gt/gt.json"))
    reads = REQUIRES[stage] + OPTIONAL_INPUTS.get(stage, ())
    if stage == "validate" and plan.dataset:
        reads = ("import",)
    if stage == "eval":
        reads += ("validate",)
    inputs["upstream"] = {s: done[s] for s in reads if s in done}
    return inputs


# ----------------------------------------------------------------------------- the driver
def run_batch(manifest: Manifest, out_dir: str | Path, cfg: BatchConfig | None = None) -> BatchResult:
    """Run every scene of ``manifest`` through its stages on Ray; write ``OUT/batch.json`` and
    ``OUT/batch.md``.

    Each stage of each scene is one Ray task (:func:`simgen.batch.stages.run_stage`); a scene's stages run
    in order, scenes run side by side as the cluster's resources allow. A stage whose completion record
    matches its fingerprint (and whose outputs are still there) is skipped; a stage that runs makes every
    later stage of its scene run too. A failing stage is tried ``cfg.retries`` more times, then its scene
    is recorded as failed with the error and the other scenes go on.

    Args:
        manifest: from :func:`simgen.batch.manifest.load_manifest`.
        out_dir: output folder, on storage every Ray node sees; ``OUT/<scene>/`` per scene.
        cfg: settings (default :class:`BatchConfig`).
    Returns:
        :class:`BatchResult` with the report (``interrupted`` after Ctrl-C / SIGTERM; then the report
        holds the scenes as far as they got and ``KeyboardInterrupt`` is *not* raised).
    Raises:
        BatchError: Ray is missing or unreachable, a stage asks for resources no node has, or another
        batch holds the output folder.
    """
    cfg = cfg or BatchConfig()
    out_dir = Path(out_dir).resolve()
    started = time.time()
    states = [SceneState(p) for p in manifest.scenes]
    info: dict[str, Any] = {
        "manifest": str(Path(manifest.path).resolve()),
        "out": str(out_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "retries": cfg.retries,
        "force": cfg.force,
    }
    interrupted = False
    hold = contextlib.ExitStack()
    with output_lock(out_dir), sigterm_as_interrupt():
        # Skip what is done before starting Ray: a rerun of a finished batch costs seconds, not a cluster.
        pending = {}
        for s in states:
            nxt = advance(s, out_dir, cfg)
            if nxt is None:
                s.status = "done"
            else:
                pending[s.plan.name] = nxt
        if not pending:
            info["ray"] = {"address": "not started: every stage was done"}
        else:
            with ray_session(cfg) as ray:
                resources = ray.cluster_resources()
                info["ray"] = {
                    "address": cfg.address or "embedded",
                    "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                    "cpus": resources.get("CPU", 0),
                    "gpus": resources.get("GPU", 0),
                    "memory_gb": round(resources.get("memory", 0) / 2**30, 1),
                }
                gpus = resources.get("GPU", 0) > 0
                if not cfg.address:
                    # A cluster may scale up to fit (KubeRay, cloud autoscaler); this machine will not.
                    _check_feasible(ray, manifest.scenes, gpus)
                try:
                    _drive(ray, states, pending, out_dir, cfg, gpus, info, started)
                except KeyboardInterrupt:
                    # Ray's shutdown and the report take seconds: hold simgen's forced exit off until the
                    # report is written (simgen.interrupts; bounded by its POSTPONE_MAX_S)
                    hold.enter_context(postpone_forced_exit())
                    interrupted = True
                    for s in states:
                        if s.status in ("running", "pending"):
                            s.status = "interrupted"
                            for st in s.stages.values():
                                if st["status"] == "running":
                                    st["status"] = "interrupted"
    info["seconds"] = round(time.time() - started, 2)
    info["interrupted"] = interrupted
    report = write_report(out_dir, states, info)
    hold.close()
    return BatchResult(out_dir, report, interrupted)


def advance(s: SceneState, out_dir: Path, cfg: BatchConfig) -> tuple[str, str, dict[str, Any]] | None:
    """Move ``s`` past the stages that are done (matching record, outputs present) or do not apply (eval
    without GT); return ``(stage, fingerprint, inputs)`` of the next stage to run, None when none is left."""
    scene_root = out_dir / s.plan.name
    while s.index < len(s.plan.stages):
        stage = s.plan.stages[s.index]
        inputs = stage_inputs(s.plan, stage, out_dir, s.fingerprints)
        fp = records.fingerprint(stage, s.plan.stage_config(stage), inputs.get("upstream", {}), inputs)
        if stage == "eval" and not _has_gt(scene_root):
            s.stages[stage] = {"status": "no-gt", "seconds": 0.0, "attempts": 0}
            s.index += 1
            continue
        rec = None if (cfg.force or s.dirty) else records.read_record(scene_root, stage)
        if (
            rec is not None
            and rec["fingerprint"] == fp
            and records.outputs_present(stage, rec, s.plan.scene_dir(out_dir), s.plan.build_dir(out_dir))
        ):
            s.fingerprints[stage] = fp
            s.stages[stage] = {"status": "skipped", "seconds": rec.get("seconds"), "attempts": 0}
            s.index += 1
            continue
        return stage, fp, inputs
    return None


def _drive(
    ray,
    states: list[SceneState],
    pending: dict[str, tuple[str, str, dict[str, Any]]],
    out_dir: Path,
    cfg: BatchConfig,
    gpus: bool,
    info: dict[str, Any],
    started: float,
) -> None:
    """Submit stages as scenes become ready, collect results, retry, until every scene is done or failed."""
    from tqdm import tqdm

    task = ray.remote(run_stage)
    running: dict[Any, tuple[SceneState, str, str, dict]] = {}
    done_already = sum(1 for s in states if s.status == "done")
    bar = tqdm(
        total=len(states),
        initial=done_already,
        unit="scene",
        desc="batch",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    shown = [""]

    def show() -> None:
        n = {k: sum(1 for s in states if s.status == k) for k in ("done", "running", "failed")}
        text = f"done {n['done']}, running {n['running']}, failed {n['failed']}"
        if text != shown[0]:  # redraw on change only (a log file gets one line per change)
            shown[0] = text
            bar.set_postfix_str(text, refresh=True)

    def report() -> None:
        write_report(out_dir, states, {**info, "seconds": round(time.time() - started, 2)})

    def launch(s: SceneState, stage: str, fp: str, inputs: dict[str, Any]) -> None:
        s.dirty = True  # this stage runs: every later stage of the scene runs too
        s.attempts += 1
        s.status = "running"
        s.stages[stage] = {"status": "running", "seconds": None, "attempts": s.attempts}
        opts = stage_resources(s.plan, stage, gpus)
        ref = task.options(name=f"{s.plan.name}:{stage}", max_retries=0, **opts).remote(
            s.plan, stage, str(out_dir), fp, inputs, s.attempts
        )
        running[ref] = (s, stage, fp, inputs)

    def next_stage(s: SceneState) -> None:
        nxt = advance(s, out_dir, cfg)
        if nxt is not None:
            launch(s, *nxt)
            return
        s.status = "done"
        bar.update(1)
        report()

    try:
        for s in states:
            if s.plan.name in pending:
                launch(s, *pending[s.plan.name])
        show()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=cfg.poll_seconds)
            for ref in ready:
                s, stage, fp, inputs = running.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died (OOM kill, node lost): no record
                    out = {"ok": False, "seconds": None, "error": f"Ray task failed: {type(e).__name__}: {e}"}
                    out["message"] = out["error"]
                    records.write_error(out_dir / s.plan.name, stage, {**out, "attempt": s.attempts})
                st = s.stages[stage]
                st["seconds"] = round(out["seconds"], 3) if out.get("seconds") is not None else None
                if out["ok"]:
                    st["status"] = "done"
                    s.fingerprints[stage] = fp
                    s.index += 1
                    s.attempts = 0
                    next_stage(s)
                elif s.attempts <= cfg.retries:
                    st["status"] = "retrying"
                    launch(s, stage, fp, inputs)
                else:
                    st["status"] = "failed"
                    s.status = "failed"
                    s.error = {k: out.get(k) for k in ("error", "message", "type", "problems") if k in out}
                    s.error["stage"] = stage
                    bar.update(1)
                    report()
            show()
    except KeyboardInterrupt:
        # Stop the work now: force-cancel kills the workers running these tasks (their stages have
        # no record, so the next run redoes them; outputs are written atomically, so nothing is half-done).
        for ref in running:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()


def _has_gt(scene_root: Path) -> bool:
    rec = records.read_record(scene_root, "validate") or {}
    return bool((rec.get("result") or {}).get("ground_truth"))
