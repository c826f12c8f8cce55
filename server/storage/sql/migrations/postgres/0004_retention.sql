-- Retention sweeps find old messages and idle threads by time instead of scanning every row.
CREATE INDEX messages_by_time ON messages (create_time);
CREATE INDEX threads_by_update ON threads (update_time, workspace_id, thread_id);
