-- Tasks: one row per attempt of a planning, step or completion task.
-- Columns mirror makima.tasks.Task; `version` is the compare-and-set counter.
CREATE TABLE tasks (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('planning', 'step', 'completion')),
    namespace       text NOT NULL,
    directive_uid   text NOT NULL,
    directive_name  text NOT NULL,
    step_uid        text,
    step_name       text,
    attempt         integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    generation      integer NOT NULL DEFAULT 1 CHECK (generation >= 1),
    state           text NOT NULL DEFAULT 'pending' CHECK (
                        state IN ('pending', 'dispatched', 'running', 'succeeded', 'failed', 'cancelled', 'lost')),
    executor        text CHECK (executor IN ('job', 'daemon')),
    executor_ref    text,
    branch          text,
    base_branch     text,
    continue_from   text,
    merge_branches  text[] NOT NULL DEFAULT '{}',
    "commit"        text,
    result          jsonb,
    error           text,
    token_hash      text,
    heartbeat_at    timestamptz,
    deadline_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    version         integer NOT NULL DEFAULT 1
) WITH (fillfactor = 80);  -- room for HOT updates (heartbeats touch no indexed column)

CREATE INDEX tasks_by_directive ON tasks (directive_uid, created_at);
-- Small (active tasks only) and free of heartbeat_at, so heartbeats stay HOT updates.
CREATE INDEX tasks_active ON tasks (namespace)
    WHERE state IN ('pending', 'dispatched', 'running');

-- Per-task event log: append-only, seq assigned from task_event_seq under its row lock.
CREATE TABLE task_events (
    task_id  uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq      bigint NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    type     text NOT NULL,
    payload  jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (task_id, seq)  -- serves both "since seq" and "last N" (backward scan)
);

CREATE TABLE task_event_seq (
    task_id   uuid PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    last_seq  bigint NOT NULL
);

-- Registered daemons; (namespace, name) is stable across reconnects, so is the id.
CREATE TABLE daemons (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    namespace      text NOT NULL,
    name           text NOT NULL,
    labels         jsonb NOT NULL DEFAULT '{}',
    capacity       integer NOT NULL CHECK (capacity >= 0),
    in_flight      integer NOT NULL DEFAULT 0 CHECK (in_flight >= 0),
    token_hash     text,
    connected      boolean NOT NULL DEFAULT true,
    last_seen      timestamptz NOT NULL DEFAULT now(),
    registered_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace, name)
);

CREATE INDEX daemons_connected ON daemons (namespace) WHERE connected;

-- The namespace-wide token daemons present when they register (hash only).
CREATE TABLE daemon_tokens (
    namespace   text PRIMARY KEY,
    token_hash  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
