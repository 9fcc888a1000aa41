-- The TaskSpec a task was dispatched with: what a Job pod fetches with GET /v1/tasks/{id}
-- and what a daemon is sent. Kept with the task so a restarted operator serves the same spec.
ALTER TABLE tasks ADD COLUMN spec jsonb;
