-- Event batches already stored, by the id their sender gave them: a batch posted again
-- (a retry after a lost reply) is recognised and not stored twice.
CREATE TABLE task_event_batches (
    task_id   uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    batch_id  text NOT NULL,
    last_seq  bigint NOT NULL,
    PRIMARY KEY (task_id, batch_id)
);
