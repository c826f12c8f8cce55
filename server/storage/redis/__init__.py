"""The L1 tier on Redis: key names, Lua scripts, the cache, the pipelined connection and the outbox flusher."""
