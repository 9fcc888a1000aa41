"""Task endpoints: what a running task (Job pod or daemon) says to the operator.

    GET  /v1/tasks/{id}               -> TaskSpec                      (task token)
    POST /v1/tasks/{id}/events        EventBatch -> {"lastSeq": n}     (task token)
    POST /v1/tasks/{id}/result        TaskResult -> {"accepted": true} (task token)
    POST /v1/tasks/{id}/steps         StepBatch  -> {"accepted": n, "total": m}  (planning tasks;
                                      a step identical to one stored before is accepted again)
    POST /v1/tasks/{id}/pull-request  PullRequestReport -> {"accepted": true}   (completion tasks)
    GET  /v1/tasks/{id}/events?since=&limit=  -> EventPage          (reader token or task token)

State changes are compare-and-set on the task's version (`_cas`): on a conflict the task is
re-read (and re-authorised: it may have finished meanwhile) a bounded number of times.

What lands in `tasks.result` (JSON), for the controller:
- planning: `{"steps": [StepSubmission by alias: name, title, description, taskPlan,
  dependsOn, orderIndex], "final": true?, ...}`, accumulated across calls; `final` marks the
  plan complete (an empty final batch: a re-plan with nothing new to do; refused for
  generation 1), after which nothing more is accepted;
- completion: `{"pull_request_url": url, "pull_request": {"url", "branch"}, ...}`;
- every kind, on its result: the TaskResult fields (`outcome`, `branch`, `commit`,
  `changed_files`, `message`, `pull_request_url`, `usage`), merged over what is already there;
  a result's `usage` also counts into makima_agent_tokens_total / makima_agent_cost_usd_total.
Events of type `heartbeat` only refresh `heartbeat_at`; they are not stored. A batch with a
`batchId` already stored is not stored again. Every report can thus be sent again safely.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from makima.control import metrics
from makima.control.api.auth import authorize_reader, authorize_task, bearer_token
from makima.control.api.deps import ApiDeps
from makima.control.api.errors import ApiError, json_response, problems_from_validation
from makima.control.logs import task_ids
from makima.control.store import IllegalTransition, VersionConflict, token_matches
from makima.core.protocol import (
    EventBatch,
    EventPage,
    EventType,
    Outcome,
    Problem,
    PullRequestReport,
    StepBatch,
    StepSubmission,
    StoredEvent,
    TaskResult,
)
from makima.core.tasks import Task, TaskKind, TaskState

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")

DEPS_KEY: web.AppKey[ApiDeps] = web.AppKey("makima_api_deps", ApiDeps)
MAX_PROBLEM_NAME = 100
DEFAULT_EVENTS_LIMIT = 100
MAX_EVENTS_LIMIT = 1000


# ---- body helpers ---------------------------------------------------------------------------


async def read_json(request: web.Request) -> Any:
    """The request body as JSON (strict: no NaN, bounded nesting); 413 if over the size limit."""
    raw = await request.read()  # raises 413 past client_max_size
    if not raw.strip():
        raise ApiError(400, "empty body: expected a JSON object")
    try:
        return from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None


def parse(model: type[M], data: Any) -> M:
    """Validate `data` as `model`; 422 listing every problem (unknown fields included)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation(exc)
        raise ApiError(422, f"invalid {model.__name__}: {len(problems)} problem(s)", problems) from None


def reject_nul(data: Any, path: str = "") -> None:
    """PostgreSQL text cannot hold U+0000; refuse it in fields that are stored as text."""
    found: list[Problem] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str):
            if "\x00" in value:
                found.append(Problem(message="NUL characters are not allowed", field=where or None))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k, where)
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}.{i}" if where else str(i))

    walk(data, path)
    if found:
        raise ApiError(422, f"{len(found)} field(s) contain NUL characters", found[:50])


# ---- shared plumbing -----------------------------------------------------------------------


def _deps(request: web.Request) -> ApiDeps:
    return request.app[DEPS_KEY]


async def _authorized(request: web.Request) -> tuple[ApiDeps, Task, str]:
    deps = _deps(request)
    token = bearer_token(request)
    try:
        task = await authorize_task(deps.store, request.match_info["task_id"], token)
    except ApiError:
        metrics.TASK_REPORTS.labels(report="refused").inc()
        raise
    return deps, task, token


async def _notify(deps: ApiDeps, task: Task) -> None:
    """The controller's fast path; its failure must not fail the report (the timer catches up)."""
    try:
        await deps.on_task_report(task)
    except Exception:
        log.exception(
            "on_task_report failed for task %s (the periodic reconcile will catch up)", task.id, extra=task_ids(task)
        )


async def _cas(deps: ApiDeps, task: Task, token: str, change: Callable[[Task], Awaitable[R]]) -> R:
    """`change(task)` makes one compare-and-set on the task as last read. When it loses the race
    (VersionConflict, IllegalTransition) the task is read again — and authorised again: it may
    have finished meanwhile — and `change` runs again, up to `deps.cas_retries` times; then 409."""
    for _ in range(deps.cas_retries):
        try:
            return await change(task)
        except (VersionConflict, IllegalTransition):
            task = await authorize_task(deps.store, task.id, token)
    raise ApiError(409, f"task {task.id} keeps changing under concurrent reports; retry")


async def _first_contact(deps: ApiDeps, task: Task, token: str) -> tuple[Task, bool]:
    """pending/dispatched -> running; (task, whether this call moved it)."""

    async def start(task: Task) -> tuple[Task, bool]:
        if task.state not in (TaskState.PENDING, TaskState.DISPATCHED):
            return task, False
        return await deps.store.transition(task.id, task.version, TaskState.RUNNING, now=deps.clock()), True

    return await _cas(deps, task, token, start)


# ---- handlers ------------------------------------------------------------------------------


async def get_spec(request: web.Request) -> web.Response:
    deps, task, _ = await _authorized(request)
    spec = await deps.spec_for(task)
    if spec is None:
        raise ApiError(404, f"task {task.id} has no spec (its directive or step is gone)")
    return json_response(spec)


async def post_events(request: web.Request) -> web.Response:
    deps, task, token = await _authorized(request)
    batch = parse(EventBatch, await read_json(request))
    now = deps.clock()
    events = [(e.type.value, e.payload) for e in batch.events if e.type is not EventType.HEARTBEAT]
    last_seq = await deps.store.append_events(task.id, events, now=now, batch_id=batch.batch_id)
    await deps.store.heartbeat(task.id, now)
    task, moved = await _first_contact(deps, task, token)
    metrics.TASK_REPORTS.labels(report="events").inc()
    if moved:
        await _notify(deps, task)
    return web.json_response({"lastSeq": last_seq})


def _final_state(result: TaskResult) -> TaskState:
    return TaskState.SUCCEEDED if result.outcome is Outcome.SUCCEEDED else TaskState.FAILED


def _is_replay(task: Task, report: TaskResult) -> bool:
    """The very report that finished this task, sent again (a client retry after a lost reply)."""
    stored = task.result or {}
    return (
        task.state is _final_state(report)
        and stored.get("outcome") == report.outcome.value
        and stored.get("branch") == report.branch
        and stored.get("commit") == report.commit
    )


async def post_result(request: web.Request) -> web.Response:
    deps = _deps(request)
    token = bearer_token(request)
    task_id = request.match_info["task_id"]
    try:
        task = await authorize_task(deps.store, task_id, token)
    except ApiError:
        # Idempotent replay of the accepted report by the same attempt: say "accepted" again.
        finished = await deps.store.get_task(task_id)
        if finished is not None and finished.state.terminal and token_matches(token, finished.token_hash):
            try:
                report = parse(TaskResult, await read_json(request))
            except ApiError:
                report = None  # not a replay: the refusal below is the answer
            if report is not None and _is_replay(finished, report):
                return web.json_response({"accepted": True, "duplicate": True})
        metrics.TASK_REPORTS.labels(report="refused").inc()
        raise
    data = await read_json(request)
    reject_nul(data)
    report = parse(TaskResult, data)
    if report.branch is not None and task.branch is not None and report.branch != task.branch:
        metrics.TASK_REPORTS.labels(report="refused").inc()
        raise ApiError(
            422,
            "result refused",
            [Problem(field="branch", message=f"this task works on branch {task.branch!r}, not {report.branch!r}")],
        )
    target = _final_state(report)
    reported = report.model_dump(mode="json", exclude_none=True)

    async def finish(task: Task) -> Task:
        if task.state is TaskState.PENDING:  # a report before dispatch was recorded: pass through running
            task, _moved = await _first_contact(deps, task, token)
        fields: dict[str, Any] = {"result": {**(task.result or {}), **reported}}
        if report.branch is not None:
            fields["branch"] = report.branch
        if report.commit is not None:
            fields["commit"] = report.commit
        if target is TaskState.FAILED:
            fields["error"] = report.message or "the task reported failure without a message"
        return await deps.store.transition(task.id, task.version, target, now=deps.clock(), **fields)

    task = await _cas(deps, task, token, finish)
    metrics.TASK_REPORTS.labels(report="result").inc()
    if report.usage is not None:  # counted once: a replayed report is answered above
        agent = report.usage.agent or "custom"
        metrics.AGENT_TOKENS.labels(agent, task.namespace, "input").inc(report.usage.input_tokens)
        metrics.AGENT_TOKENS.labels(agent, task.namespace, "output").inc(report.usage.output_tokens)
        if report.usage.cost_usd is not None:
            metrics.AGENT_COST.labels(agent, task.namespace).inc(report.usage.cost_usd)
    if task.executor == "daemon":
        deps.hub.task_finished(task.executor_ref, task.id)  # before the fast path routes new work
    await _notify(deps, task)
    return web.json_response({"accepted": True})


def _stored_steps(task: Task) -> list[StepSubmission]:
    raw = (task.result or {}).get("steps") or []
    out = []
    for item in raw:
        try:
            out.append(StepSubmission.model_validate(item))
        except ValidationError:
            log.warning("task %s: ignoring an unreadable stored step", task.id, extra=task_ids(task))
    return out


def _step_name(raw_steps: Any, index: Any) -> str | None:
    if isinstance(raw_steps, list) and isinstance(index, int) and 0 <= index < len(raw_steps):
        item = raw_steps[index]
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name:
            return name[:MAX_PROBLEM_NAME]
    return None


def _parse_steps(data: Any) -> tuple[list[Problem], list[StepSubmission], bool]:
    """Shape problems (one per pydantic error, with the step's name), the valid steps, `final`."""
    try:
        batch = StepBatch.model_validate(data)
        return [], batch.steps, batch.final
    except ValidationError as exc:
        raw_steps = data.get("steps") if isinstance(data, dict) else None
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple(err.get("loc", ()))
            step = _step_name(raw_steps, loc[1]) if len(loc) >= 2 and loc[0] == "steps" else None
            field = ".".join(str(p) for p in loc) or None
            problems.append(Problem(message=str(err.get("msg", "invalid")), field=field, step=step))
    valid: list[StepSubmission] = []
    if isinstance(raw_steps, list):
        for item in raw_steps[:200]:
            try:
                valid.append(StepSubmission.model_validate(item))
            except ValidationError:
                pass
    return problems, valid, False


@dataclass
class _StepMerge:
    """A planning task's submission merged with the steps it stored before."""

    previous: list[StepSubmission]
    new: list[StepSubmission]
    replayed: int  # steps identical to ones stored before (a retry after a lost reply)
    final: bool
    repeated: bool = False  # the very submission that made the plan final, sent again

    def answer(self) -> dict[str, int]:
        return {"accepted": len(self.new) + self.replayed, "total": len(self.previous) + len(self.new)}


async def _merge_steps(
    deps: ApiDeps, task: Task, submitted: list[StepSubmission], final: bool, shape_problems: list[Problem]
) -> _StepMerge:
    """Check a submission against what `task` stored before; ApiError (409, 422) if refused."""
    previous = _stored_steps(task)
    problems = list(shape_problems)
    if (task.result or {}).get("final"):
        stored_before = {s.name: s for s in previous}
        if final and not problems and all(stored_before.get(s.name) == s for s in submitted):
            return _StepMerge(previous, [], len(submitted), final, repeated=True)
        raise ApiError(409, f"task {task.id} already marked its plan final: nothing more can be submitted")
    if final and not submitted and not previous and task.generation < 2:
        problems.append(Problem(message="the first plan (generation 1) needs at least one step", field="steps"))
    known = {s.name for s in previous}
    stored = {s.name: s for s in previous}
    new: list[StepSubmission] = []
    replayed = 0
    for step in submitted:
        if step.name in stored and stored[step.name] == step and not any(s.name == step.name for s in new):
            replayed += 1  # the very step stored before (a retry after a lost reply): accepted again
            continue
        if step.name in known:
            earlier = "in this submission" if any(s.name == step.name for s in new) else "earlier"
            problems.append(
                Problem(message=f"step {step.name!r} was already submitted {earlier}", field="name", step=step.name)
            )
            continue
        known.add(step.name)
        new.append(step)
    if previous or new:
        problems += await deps.validate_steps(task, previous + new)
    if problems:
        raise ApiError(422, f"step submission refused with {len(problems)} problem(s); nothing was stored", problems)
    return _StepMerge(previous, new, replayed, final)


async def post_steps(request: web.Request) -> web.Response:
    deps, task, token = await _authorized(request)
    if task.kind is not TaskKind.PLANNING:
        raise ApiError(409, f"task {task.id} is a {task.kind.value} task: only planning tasks submit steps")
    data = await read_json(request)
    reject_nul(data)
    problems, submitted, final = _parse_steps(data)

    async def store(task: Task) -> tuple[Task, _StepMerge]:
        merge = await _merge_steps(deps, task, submitted, final, problems)
        if merge.repeated or not (merge.new or merge.final):
            return task, merge  # only steps stored before: nothing to write
        result = {
            **(task.result or {}),
            "steps": [s.model_dump(mode="json", by_alias=True) for s in merge.previous + merge.new],
        }
        if final:
            result["final"] = True
        return await deps.store.update_fields(task.id, task.version, result=result), merge

    task, merge = await _cas(deps, task, token, store)
    if not merge.repeated:
        metrics.TASK_REPORTS.labels(report="steps").inc()
        if merge.new or merge.final:
            await _notify(deps, task)
    return web.json_response(merge.answer())


async def post_pull_request(request: web.Request) -> web.Response:
    deps, task, token = await _authorized(request)
    if task.kind is not TaskKind.COMPLETION:
        raise ApiError(409, f"task {task.id} is a {task.kind.value} task: only completion tasks report pull requests")
    data = await read_json(request)
    reject_nul(data)
    report = parse(PullRequestReport, data)
    pr = report.model_dump(mode="json", exclude_none=True)

    async def record(task: Task) -> Task:
        result = {**(task.result or {}), "pull_request": pr, "pull_request_url": report.url}
        return await deps.store.update_fields(task.id, task.version, result=result)

    task = await _cas(deps, task, token, record)
    metrics.TASK_REPORTS.labels(report="pull_request").inc()
    await _notify(deps, task)
    return web.json_response({"accepted": True})


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"query parameter {name!r} must be between {lo} and {hi}")
    return value


async def get_events(request: web.Request) -> web.Response:
    deps = _deps(request)
    task_id = request.match_info["task_id"]
    await authorize_reader(deps.store, task_id, bearer_token(request), deps.reader_token)
    since = _int_query(request, "since", 0, 0, 2**62)
    limit = _int_query(request, "limit", DEFAULT_EVENTS_LIMIT, 1, MAX_EVENTS_LIMIT)
    if await deps.store.get_task(task_id) is None:
        raise ApiError(404, f"task {task_id} not found")
    events = await deps.store.events(task_id, since, limit)
    page = EventPage(
        events=[StoredEvent(seq=e.seq, at=e.at, type=e.type, payload=e.payload) for e in events],
        next_since=events[-1].seq if events else since,
    )
    return json_response(page)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/tasks/{task_id}", get_spec)
    app.router.add_post("/v1/tasks/{task_id}/events", post_events)
    app.router.add_get("/v1/tasks/{task_id}/events", get_events)
    app.router.add_post("/v1/tasks/{task_id}/result", post_result)
    app.router.add_post("/v1/tasks/{task_id}/steps", post_steps)
    app.router.add_post("/v1/tasks/{task_id}/pull-request", post_pull_request)
