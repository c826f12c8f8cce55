-- Message v2: the client-chosen message id, unique in a thread. Existing rows have none (NULL), and their
-- parts, envelope and token count are empty, which readers take as a plain text message.
-- The index is not UNIQUE on purpose: the append paths refuse a repeated id (ALREADY_EXISTS), and the
-- flusher must never be unable to write a message that was acknowledged.
ALTER TABLE messages ADD COLUMN message_id text;
CREATE INDEX messages_by_message_id ON messages (workspace_id, thread_id, message_id)
    WHERE message_id IS NOT NULL;
