"""Every derived name in one place: task ids, Job names, branches, labels.

Names are pure functions of stable inputs (uids, attempts), which is what makes
every action idempotent: re-running an action after a crash derives the same name
and meets the object it already created.
"""

from __future__ import annotations

import hashlib
import re
import uuid

DOMAIN = "makima.dev"
LABEL_DIRECTIVE = f"{DOMAIN}/directive"
LABEL_STEP = f"{DOMAIN}/step"
LABEL_TASK = f"{DOMAIN}/task"
LABEL_ATTEMPT = f"{DOMAIN}/attempt"
LABEL_KIND = f"{DOMAIN}/task-kind"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "makima"
FINALIZER = f"{DOMAIN}/cancel-tasks"
# A person's request to retry failed steps (`makima retry`): editors may set annotations on a
# Directive, not a step's status; the operator acts on each new value once.
RETRY_ANNOTATION = f"{DOMAIN}/retry"

# Fixed namespace for UUIDv5 task ids; changing it would orphan every existing task.
_TASK_NAMESPACE = uuid.UUID("5b0f6f0e-2f7c-4d59-9a43-6d616b696d61")

_SLUG_BAD = re.compile(r"[^a-z0-9]+")


def slugify(text: str, max_len: int = 40) -> str:
    """Lower-case, DNS-safe slug of `text`; never empty."""
    slug = _SLUG_BAD.sub("-", text.lower()).strip("-")[:max_len].strip("-")
    return slug or "x"


def short(uid: str, n: int = 8) -> str:
    """A short, stable suffix from a uid (hex of its hash, so any string works)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:n]


def task_id(kind: str, scope_uid: str, number: int) -> str:
    """Task id from what the task is for: (kind, owning uid, attempt or generation).

    step: (step uid, attempt); planning and completion: (directive uid:generation, attempt).
    """
    return str(uuid.uuid5(_TASK_NAMESPACE, f"{kind}:{scope_uid}:{number}"))


def step_task_id(step_uid: str, attempt: int) -> str:
    return task_id("step", step_uid, attempt)


def planning_task_id(directive_uid: str, generation: int, attempt: int = 1) -> str:
    return task_id("planning", f"{directive_uid}:{generation}", attempt)


def completion_task_id(directive_uid: str, generation: int, attempt: int = 1) -> str:
    """Completion runs once per plan generation (re-completion after a re-plan), per attempt."""
    return task_id("completion", f"{directive_uid}:{generation}", attempt)


def job_name(task_id_: str) -> str:
    """Job name from a task id: 'makima-' + 32 hex = 39 chars, a valid DNS label."""
    return "makima-" + uuid.UUID(task_id_).hex


def token_secret_name(task_id_: str) -> str:
    return job_name(task_id_) + "-token"


def step_object_name(directive: str, step: str) -> str:
    """DirectiveStep object name: readable, and unique per (directive, step)."""
    name = f"{directive}-{step}"
    if len(name) <= 63:
        return name
    return f"{name[:54].rstrip('-')}-{short(name)}"


def directive_branch(directive_name: str, directive_uid: str) -> str:
    return f"makima/{slugify(directive_name)}-{short(directive_uid)}"


def step_branch(step_name: str, step_uid: str) -> str:
    return f"makima/step-{slugify(step_name)}-{short(step_uid)}"


def goal_hash(goal: str) -> str:
    return hashlib.sha256(goal.strip().encode()).hexdigest()[:16]


def step_labels(directive: str, step: str) -> dict[str, str]:
    return {LABEL_DIRECTIVE: directive, LABEL_STEP: step, LABEL_MANAGED_BY: MANAGED_BY}


def task_labels(directive: str, task_id_: str, kind: str, attempt: int, step: str | None) -> dict[str, str]:
    labels = {
        LABEL_DIRECTIVE: directive,
        LABEL_TASK: task_id_,
        LABEL_KIND: kind,
        LABEL_ATTEMPT: str(attempt),
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    if step:
        labels[LABEL_STEP] = step
    return labels
