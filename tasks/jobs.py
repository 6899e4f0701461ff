"""podchord's Celery tasks: thin wrappers that decode JSON arguments and call plain functions.

Task names are stable strings (``podchord.*``) so that other services can queue them by name
with ``send_task`` without importing podchord. Tasks that touch a node's Podman run on that
node's queue (:func:`node_queue`); the rest run on the shared queue.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from celery import chord, group, shared_task
from celery.exceptions import Ignore
from celery.result import AsyncResult
from celery.states import READY_STATES

from . import checkpoint as ck
from . import lock
from . import restore as rs
from .coord import TOMBSTONE, Coordinator, coordinator
from .errors import (
    CheckpointAborted,
    DeadlineExceeded,
    InvalidInput,
    MigrationFailed,
    PodchordError,
    StoreError,
)
from .names import check_image_ref, check_node, check_project
from .node_report import node_report
from .nodes import require_node
from .options import (
    CheckpointJobOptions,
    MigrateOptions,
    RestoreJobOptions,
    decode_options,
)
from .runtime import Runtime, runtime

__all__ = [
    "SHARED_QUEUE",
    "abort_checkpoint",
    "backup",
    "checkpoint_deadline",
    "checkpoint_project",
    "checkpoint_service",
    "commit_manifest",
    "migrate",
    "node_info",
    "node_queue",
    "prune",
    "restore_project",
    "ship_image",
]

log = logging.getLogger(__name__)

SHARED_QUEUE = "podchord"
# Grace after the deadline before the watchdog declares a checkpoint dead: lets a commit
# that started just in time finish its conditional put.
_WATCHDOG_GRACE_S = 2.0
_PROGRESS_EVERY_S = 1.0


def node_queue(node: str) -> str:
    """The queue only ``node``'s worker consumes."""
    return f"podchord.node.{check_node(node)}"


_MAX_DELIVERIES = 3


def _guard_redelivery(task: Any) -> int:
    """Count this delivery; fail a task delivered more than ``_MAX_DELIVERIES`` times.

    Late acks plus requeue-on-worker-lost redeliver a task whose worker died; a task that
    kills its worker every time (say, out of memory) would otherwise be redelivered forever.
    The count lives in the result backend's Redis, keyed by task id, and expires with results.
    """
    coord = coordinator(task.backend)
    if coord is None:  # not a Redis backend: no guard
        return 1
    count = coord.count_delivery(task.request.id)
    if count > _MAX_DELIVERIES:
        raise PodchordError(
            f"task {task.name}[{task.request.id}] was delivered {count} times "
            "(its worker died each time); giving up"
        )
    return count


def _this_node(node: object) -> str:
    """Refuse a task routed to the wrong worker (it would talk to the wrong Podman)."""
    node = check_node(node)
    mine = runtime().node
    if node != mine:
        raise InvalidInput(f"task for node {node!r} reached the worker of node {mine!r}")
    return node


def _progress(task: Any, service: str) -> Callable[[int], None]:
    """A throttled progress reporter: PROGRESS state plus a Flower-visible event.

    It is called from the store's transfer threads, where Celery's (thread-local) request is
    empty: the task id and hostname are captured here, in the task's own thread.
    """
    task_id, hostname = task.request.id, task.request.hostname
    total = 0
    last = 0.0

    def report(n: int) -> None:
        nonlocal total, last
        total += n
        now = time.monotonic()
        if now - last >= _PROGRESS_EVERY_S:
            last = now
            meta = {"service": service, "bytes": total}
            task.update_state(task_id=task_id, state="PROGRESS", meta=meta)
            with task.app.events.default_dispatcher(hostname=hostname) as events:
                events.send("task-progress", uuid=task_id, **meta)

    return report


@shared_task(name="podchord.checkpoint_project", bind=True)
def checkpoint_project(
    self: Any, project: str, node: str, options: Mapping[str, Any] | None = None
) -> Any:
    """Checkpoint every service of ``project`` on ``node``.

    This task's own id is the one to wait on: the chord's body (commit) or error callback
    (abort) stores the final result under it.
    """
    opts = decode_options(CheckpointJobOptions, options)
    _start_checkpoint(self, check_project(project), _this_node(node), opts, then=None)


def _part_id(outer_task_id: str, part: str) -> str:
    """A chord member's task id, derived from the outer task id so a relaunch reuses it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"podchord:{outer_task_id}:{part}"))


def _start_checkpoint(
    task: Any,
    project: str,
    node: str,
    opts: CheckpointJobOptions,
    then: Mapping[str, Any] | None,
) -> None:
    """Plan, launch the chord, arm the deadline watchdog; raise Ignore (result comes later).

    Redelivery-safe: the plan is recorded under this task's id before anything is sent, and
    every chord member's task id derives from it. A delivery that finds a recorded plan (the
    first one died part-way through launching) sends the same chord again: Celery counts each
    header task id once, and the header tasks return their stored record when they already
    ran, so nothing is checkpointed twice and no second checkpoint strands the first.
    """
    rt = runtime()
    outer = task.request.id
    if AsyncResult(outer, app=task.app).state in READY_STATES:
        raise Ignore()  # a redelivery after the chord already finished
    client = getattr(task.backend, "client", None)
    if client is not None:  # a Redis backend (always, with valid settings)
        ttl_s = lock.lock_ttl_s(opts.deadline_s, rt.settings.task_timeout_s)
        what = "migrate" if then is not None and "target" in then else "checkpoint"
        lock.acquire(client, project, outer, ttl_s, what)  # a redelivery holds it already
    try:
        _launch_checkpoint(task, rt, project, node, opts, then)
    except BaseException:
        # Nothing was launched (or launching failed): nobody else will release the lock.
        _unlock(task.backend, project, outer)
        raise
    # The final state is written by commit/abort/restore; Ignore keeps Celery from
    # overwriting this task's PROGRESS state with a premature SUCCESS.
    raise Ignore()


def _launch_checkpoint(
    task: Any,
    rt: Runtime,
    project: str,
    node: str,
    opts: CheckpointJobOptions,
    then: Mapping[str, Any] | None,
) -> None:
    outer = task.request.id
    coord = coordinator(task.backend)
    plan = None if coord is None else coord.recorded_plan(outer)
    if plan is None:
        plan = ck.plan_checkpoint(rt.libpod(), rt.store(), project, node, opts)
        plan["outer_task_id"] = outer
        plan["then"] = then
        if coord is not None:
            plan = coord.plan_once(outer, plan)
    elif TOMBSTONE not in plan:
        log.warning("redelivered %s: relaunching checkpoint %s", outer, plan["checkpoint_id"])
    if TOMBSTONE in plan:  # planning is read-only: nothing to undo
        raise DeadlineExceeded(
            f"checkpoint of {project} on node {node} started after its deadline; nothing was done"
        )
    queue = node_queue(node)
    expires = (
        None
        if plan["deadline_at"] is None
        else datetime.fromtimestamp(plan["deadline_at"], UTC)
    )
    # argsrepr: Flower shows "project/id service" instead of the whole plan.
    where = f"{project}/{plan['checkpoint_id']}"
    header = [
        checkpoint_service.si(plan, svc).set(
            queue=queue, expires=expires, task_id=_part_id(outer, f"service:{svc['service']}"),
            argsrepr=f"({where!r}, {svc['service']!r})",
        )
        for svc in plan["services"]
    ] + [
        ship_image.si(plan, img["id"], img["ref"]).set(
            queue=queue, expires=expires, task_id=_part_id(outer, f"image:{img['id']}"),
            argsrepr=f"({where!r}, {img['ref']!r})",
        )
        for img in plan["images"]
    ]
    # The header ids go into the PROGRESS meta, so a client can show progress per service.
    ids = [sig.options["task_id"] for sig in header]
    task.update_state(
        state="PROGRESS",
        meta={
            "checkpoint_id": plan["checkpoint_id"],
            "phase": "checkpoint",
            "services": {s["service"]: i for s, i in zip(plan["services"], ids, strict=False)},
        },
    )
    body = commit_manifest.s(plan).set(queue=queue, argsrepr=f"({where!r},)")
    body = body.on_error(
        abort_checkpoint.s(plan=plan).set(queue=queue, kwargsrepr=f"{{'plan': {where!r}}}")
    )
    if expires is not None:
        checkpoint_deadline.apply_async(
            (outer, project, node, plan["checkpoint_id"]),
            queue=SHARED_QUEUE,
            eta=datetime.fromtimestamp(plan["deadline_at"] + _WATCHDOG_GRACE_S, UTC),
            task_id=_part_id(outer, "deadline"),
        )
    chord(group(header, task_id=_part_id(outer, "header")), body).apply_async(
        task_id=_part_id(outer, "commit")
    )


def _unlock(backend: Any, project: str, token: str) -> None:
    """Release the project lock, right before the final result is written (``tasks.lock``).

    Before, not after: a caller that sees the result may start the next operation at once.
    """
    client = getattr(backend, "client", None)
    if client is None:
        return
    # The result must still be written: a lock that cannot be released expires on its own.
    with contextlib.suppress(Exception):
        lock.release(client, project, token)


@shared_task(name="podchord.backup", bind=True)
def backup(
    self: Any, project: str, node: str, keep: int, options: Mapping[str, Any] | None = None
) -> Any:
    """A backup checkpoint (``leave_running``), then ``podchord.prune`` to the newest ``keep``.

    What beat schedules (``workers/schedule.py``); its id, like checkpoint_project's, ends
    with the commit summary.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidInput(f"keep must be a whole number >= 1, got {keep!r}")
    opts = decode_options(CheckpointJobOptions, {**(options or {}), "leave_running": True})
    _start_checkpoint(
        self, check_project(project), _this_node(node), opts, then={"keep": keep}
    )


@shared_task(name="podchord.node_info")
def node_info(node: str, probe_image: str | None = None) -> Any:
    """Report this node's Podman, runtime and checkpoint support (``podchord status``)."""
    if probe_image is not None:
        check_image_ref(probe_image)
    return node_report(runtime().libpod(), _this_node(node), probe_image)


@shared_task(name="podchord.checkpoint_service", bind=True)
def checkpoint_service(self: Any, plan: Mapping[str, Any], service: Mapping[str, Any]) -> Any:
    """Checkpoint one service and upload its archive (header task of the chord)."""
    _guard_redelivery(self)
    _this_node(plan["node"])
    rt = runtime()
    with _lease(self, plan, f"{plan['checkpoint_id']}:{service['service']}"):
        return ck.checkpoint_service(
            rt.libpod(),
            rt.store(),
            plan,
            service,
            spool_dir=rt.settings.spool_dir,
            progress=_progress(self, service["service"]),
        )


@contextlib.contextmanager
def _lease(task: Any, plan: Mapping[str, Any], name: str) -> Any:
    """Run one header task's body at a time (a duplicate delivery waits, then finds the
    stored record); without Redis, no lease."""
    coord = coordinator(task.backend)
    if coord is None:
        yield
        return
    deadline = plan.get("deadline_at")
    wait_s = runtime().settings.task_timeout_s if deadline is None else deadline - time.time()
    try:
        with coord.lease(name, wait_s=max(0.0, wait_s)):
            yield
    except TimeoutError as exc:
        raise DeadlineExceeded(f"checkpoint {name}: {exc}") from exc


@shared_task(name="podchord.ship_image", bind=True)
def ship_image(self: Any, plan: Mapping[str, Any], image_id: str, ref: str) -> Any:
    """Store one image the checkpoint needs (header task of the chord)."""
    _guard_redelivery(self)
    _this_node(plan["node"])
    rt = runtime()
    return {"shipped_image": ck.ship_image(rt.libpod(), rt.store(), image_id, ref)}


@shared_task(name="podchord.commit_manifest")
def commit_manifest(results: list[Mapping[str, Any]], plan: Mapping[str, Any]) -> Any:
    """Chord body: verify every archive, then write the manifest (conditional put)."""
    rt = runtime()
    services = [r for r in results if "shipped_image" not in r]
    images = [r["shipped_image"] for r in results if "shipped_image" in r]
    coord = coordinator(commit_manifest.backend)
    summary = ck.commit_manifest(
        rt.store(), plan, services, images, spool_dir=rt.settings.spool_dir,
        claim=None if coord is None else lambda: _claim_commit(coord, plan),
    )
    if plan["mode"] == "eviction" and rt.settings.node == plan["node"]:
        summary["source_removed"] = ck.drop_husks(rt.libpod(), plan)
    then = plan.get("then")
    if then is None or "target" not in then:
        _unlock(commit_manifest.backend, plan["project"], plan["outer_task_id"])
        commit_manifest.backend.mark_as_done(plan["outer_task_id"], summary)
        _announce(commit_manifest, plan["outer_task_id"], summary)
        if then is not None and then.get("keep"):
            # Retention after the commit (not on a clock of its own), so the newest
            # ``keep`` are exactly what remains once the last scheduled backup is in.
            prune.apply_async((plan["project"], then["keep"]), queue=SHARED_QUEUE)
    else:
        restore_after_checkpoint.apply_async(
            (summary, then["target"], then["options"], plan["node"], plan["outer_task_id"]),
            queue=node_queue(then["target"]),
        )
    return summary


def _claim_commit(coord: Coordinator, plan: Mapping[str, Any]) -> None:
    if coord.decide(plan["checkpoint_id"], "commit") == "abort":
        raise DeadlineExceeded(
            f"checkpoint {plan['checkpoint_id']} of {plan['project']} was aborted by its "
            "deadline watchdog before it could commit"
        )


@shared_task(name="podchord.abort_checkpoint")
def abort_checkpoint(
    request: Any = None,
    exc: BaseException | None = None,
    traceback: Any = None,
    plan: Mapping[str, Any] | None = None,
) -> Any:
    """Chord error callback: delete this checkpoint's objects and bring services back.

    Celery calls a new-style error callback inline with ``(request, exc, traceback)``; the
    exception raised here becomes the checkpoint's final failure, so the caller learns what
    failed and what was rolled back.
    """
    if plan is None:
        raise InvalidInput("abort_checkpoint needs the checkpoint plan")
    rt = runtime()
    lp = rt.libpod() if rt.settings.node == plan["node"] else None
    summary = ck.abort_checkpoint(
        lp, rt.store(), plan, _describe(exc), spool_dir=rt.settings.spool_dir
    )
    if not summary["committed"]:
        exc_out = CheckpointAborted(_abort_message(summary), summary)
        _unlock(abort_checkpoint.backend, plan["project"], plan["outer_task_id"])
        abort_checkpoint.backend.mark_as_failure(plan["outer_task_id"], exc_out)
        _announce(abort_checkpoint, plan["outer_task_id"], exc_out)
    return summary


@shared_task(name="podchord.checkpoint_deadline")
def checkpoint_deadline(
    task_id: str, project: str, node: str, checkpoint_id: str | None = None
) -> Any:
    """Watchdog: a checkpoint not done by its deadline fails clean instead of hanging.

    Queued on the shared queue for the deadline, by the client (which knows only the task
    id: the node's worker may be down) and by ``checkpoint_project`` (which knows the id).
    """
    result: AsyncResult = AsyncResult(task_id, app=checkpoint_deadline.app)
    summary: dict[str, Any] = {"task_id": task_id, "project": project, "node": node}
    store = runtime().store()
    coord = coordinator(checkpoint_deadline.backend)
    if checkpoint_id is None and coord is not None:
        # The client's watchdog knows only the task id. If the task recorded a plan, judge
        # that checkpoint (a migration whose commit is claimed is restoring now: never fail
        # it). If not, record a tombstone first, so a task that starts late never launches.
        recorded = coord.plan_once(task_id, {TOMBSTONE: "deadline passed"})
        checkpoint_id = recorded.get("checkpoint_id")
    if checkpoint_id is not None:
        # A commit that claimed the checkpoint first finishes or fails on its own (and its
        # failure runs the abort, with rollback, on the node); never delete under it.
        if coord is not None and coord.decide(checkpoint_id, "abort") == "commit":
            return {**summary, "committed": True}
        try:
            committed = store.exists(store.layout.manifest(project, checkpoint_id))
        except StoreError as store_exc:  # S3 down: still fail the caller clean, below
            committed = False
            summary["store_error"] = str(store_exc)
        if committed:
            return {**summary, "committed": True}
        plan = {"project": project, "checkpoint_id": checkpoint_id, "node": node,
                "mode": "backup", "services": []}
        summary.update(ck.abort_checkpoint(None, store, plan, "deadline passed", spool_dir=None))
    if not result.ready():
        exc = DeadlineExceeded(
            f"checkpoint of {project} on node {node} was not committed by its deadline "
            f"(is the worker of node {node} running?); nothing was committed"
        )
        _unlock(checkpoint_deadline.backend, project, task_id)
        checkpoint_deadline.backend.mark_as_failure(task_id, exc)
        _announce(checkpoint_deadline, task_id, exc)
        summary["marked_failed"] = True
    return summary


@shared_task(name="podchord.restore_project", bind=True)
def restore_project(
    self: Any, checkpoint: str, node: str, options: Mapping[str, Any] | None = None
) -> Any:
    """Restore a committed checkpoint (``PROJECT/CHECKPOINT_ID`` or ``PROJECT`` = newest)."""
    opts = decode_options(RestoreJobOptions, options)
    node = _this_node(node)
    deliveries = _guard_redelivery(self)
    rt = runtime()
    project, _ = rs.split_ref(checkpoint)

    def phase(name: str) -> None:
        self.update_state(state="PROGRESS", meta={"phase": name})

    # A restore takes the project's lock too: a migration or a second restore of the same
    # project meanwhile would fight over the same container names. A migration's fallback
    # restore finds the lock handed over to its own id (restore_after_checkpoint).
    client = getattr(self.backend, "client", None)
    if client is not None:
        ttl_s = lock.restore_lock_ttl_s(rt.settings.task_timeout_s)
        lock.acquire(client, project, self.request.id, ttl_s, "restore")
    try:
        return rs.restore_project(
            rt.libpod(), rt.store(), checkpoint, node, opts,
            spool_dir=rt.settings.spool_dir, on_phase=phase, redelivered=deliveries > 1,
        )
    finally:
        _unlock(self.backend, project, self.request.id)


@shared_task(name="podchord.migrate", bind=True)
def migrate(
    self: Any, project: str, source: str, target: str, options: Mapping[str, Any] | None = None
) -> Any:
    """Eviction checkpoint on ``source``, then restore on ``target``; one id to wait on."""
    opts = decode_options(MigrateOptions, options)
    project = check_project(project)
    target = check_node(target)
    source = _this_node(source)
    if source == target:
        raise InvalidInput("migrate needs two different nodes; use restore for in place")
    # Before anything stops: an evicted workload needs a live target to be restored on.
    require_node(self.app, target)
    ck_opts = CheckpointJobOptions(
        leave_running=False,
        tcp_established=opts.tcp_established,
        compress=opts.compress,
        deadline_s=opts.deadline_s,
    )
    rs_opts = {"tcp_established": opts.tcp_established, "force_cpu": opts.force_cpu}
    _start_checkpoint(
        self, project, source, ck_opts, then={"target": target, "options": rs_opts}
    )


@shared_task(name="podchord.restore_after_checkpoint", bind=True)
def restore_after_checkpoint(
    self: Any,
    committed: Mapping[str, Any],
    node: str,
    options: Mapping[str, Any] | None,
    source: str,
    outer_task_id: str,
) -> Any:
    """Second half of migrate: restore the just-committed checkpoint on the target.

    If the restore fails, the workload is brought back on the source from the same
    checkpoint, so a failed migration still leaves it running somewhere.
    """
    opts = decode_options(RestoreJobOptions, options)
    node = _this_node(node)
    deliveries = _guard_redelivery(self)
    rt = runtime()
    backend = restore_after_checkpoint.backend
    ref = f"{committed['project']}/{committed['checkpoint_id']}"
    try:
        restored = rs.restore_project(
            rt.libpod(), rt.store(), ref, node, opts, spool_dir=rt.settings.spool_dir,
            redelivered=deliveries > 1,
        )
    except Exception as exc:
        # Any failure, typed or not (a full disk, a bug): the workload goes back home, under
        # this migration's lock, handed to the fallback before it is queued.
        fallback_id = _part_id(outer_task_id, "fallback")  # the same on a redelivery
        client = getattr(backend, "client", None)
        if client is not None:
            ttl_s = lock.restore_lock_ttl_s(rt.settings.task_timeout_s)
            with contextlib.suppress(Exception):  # else the fallback takes it (or is refused)
                lock.hand_over(client, committed["project"], outer_task_id, fallback_id,
                               ttl_s, "restore (migration fallback)")
        fallback = restore_project.apply_async(
            (ref, source, {"tcp_established": opts.tcp_established, "ignore_volumes": True}),
            queue=node_queue(source), task_id=fallback_id,
        )
        failure = MigrationFailed(
            f"restore of {ref} on {node} failed ({exc}); restoring it back on {source} "
            f"(task {fallback.id})",
            fallback_task_id=fallback.id,
        )
        backend.mark_as_failure(outer_task_id, failure)
        _announce(restore_after_checkpoint, outer_task_id, failure)
        raise failure from exc
    result = {"checkpoint": dict(committed), "restore": restored}
    _unlock(backend, committed["project"], outer_task_id)
    backend.mark_as_done(outer_task_id, result)
    _announce(restore_after_checkpoint, outer_task_id, result)
    return result


@shared_task(name="podchord.prune")
def prune(project: str, keep: int, grace_s: float = 3600.0) -> Any:
    """Retention: keep the newest ``keep`` committed checkpoints of ``project``."""
    project = check_project(project)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise InvalidInput(f"keep must be a whole number >= 1, got {keep!r}")
    if isinstance(grace_s, bool) or not isinstance(grace_s, int | float) or grace_s < 0:
        raise InvalidInput(f"grace_s must be seconds >= 0, got {grace_s!r}")
    report = runtime().store().prune(project, keep=keep, grace_s=float(grace_s))
    return _jsonable(report)


def _announce(task: Any, task_id: str, outcome: Any) -> None:
    """Send the final-state event of an outer task whose state was written by another task.

    checkpoint_project and migrate end with ``Ignore``, which sends no event: without this,
    Flower would show them as started forever although the result backend has the outcome.
    """
    failed = isinstance(outcome, BaseException)
    fields = (
        {"exception": f"{type(outcome).__name__}({str(outcome)!r})", "traceback": ""}
        if failed
        else {"result": repr(outcome)}
    )
    try:
        with task.app.events.default_dispatcher(hostname=task.request.hostname) as events:
            events.send("task-failed" if failed else "task-succeeded", uuid=task_id, **fields)
    except Exception:  # an event is a courtesy to monitors; the result is already stored
        log.warning("could not send the final event of task %s", task_id, exc_info=True)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown failure"
    return f"{type(exc).__name__}: {exc}"


def _abort_message(summary: Mapping[str, Any]) -> str:
    parts = [
        f"checkpoint {summary['checkpoint_id']} of {summary['project']} aborted: "
        f"{summary['error']}",
        f"deleted {summary['deleted_objects']} object(s)",
        f"aborted {summary['aborted_uploads']} upload(s)",
    ]
    if summary["rolled_back"]:
        parts.append(f"running again on {summary['node']}: {', '.join(summary['rolled_back'])}")
    if summary["not_rolled_back"]:
        parts.append(f"NOT rolled back: {summary['not_rolled_back']}")
    if summary.get("store_error"):
        parts.append(summary["store_error"])
    return "; ".join(parts)


def _jsonable(value: Any) -> Any:
    """A dataclass report as plain JSON (datetimes as ISO strings)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
