"""Erasure and retention: deleting a user, expiring idle threads and trimming old messages, in both tiers.

Every delete goes through the repository's ``delete_thread`` (a store tombstone first, then Redis), so a
queued append of a deleted incarnation is skipped when it flushes.
"""

from __future__ import annotations

from server.storage.models import ThreadCursor, ThreadInfo, ThreadKey, Tier, Trimmed
from server.storage.protocols import RetentionStore
from server.storage.repository import Repository
from server.storage.results import Served, UserErasure


class Eraser:
    """Deletes what a user, an operator or the retention policy asks to delete.

    Args:
        repository: the consistency policy (thread and preference deletes go through it).
        retention: the store's retention reads and trims.
    """

    def __init__(self, repository: Repository, retention: RetentionStore) -> None:
        self._repo = repository
        self._tiers = repository.tiers
        self._retention = retention

    async def delete_user(self, workspace_id: str, user_id: str, page_size: int = 200) -> UserErasure:
        """Delete every thread and every preference of a user, from both tiers and the outbox.

        The user's threads are listed newest first in keyset pages, and each is deleted as by
        ``delete_thread`` (store tombstone, then the Redis window, counter and outbox marker), so a
        queued append of a deleted incarnation is skipped when it flushes. Threads created after the
        listing passed their place are not visited, so the call always ends. Then all preferences are
        deleted (store first, then the cached hash).

        Raises:
            UnavailableError: the store is down; what was deleted so far stays deleted.
        """
        threads = messages = 0
        degraded = False
        after: ThreadCursor | None = None
        while True:
            page = await self._repo.list_threads(workspace_id, user_id, after, page_size)
            for t in page:
                deleted = await self._repo.delete_thread(ThreadKey(t.workspace_id, t.thread_id))
                if deleted is not None:
                    threads += 1
                    messages += deleted[0]
                    degraded = degraded or deleted[1].degraded
            if len(page) < page_size:
                break
            after = ThreadCursor(page[-1].create_time_us, page[-1].thread_id)
        change, served = await self._repo.preferences.delete(workspace_id, user_id, None)
        return UserErasure(threads, messages, change.affected, Served(Tier.STORE, degraded or served.degraded))

    async def expire_idle_threads(self, cutoff_us: int, batch: int) -> tuple[int, int]:
        """Retention: delete threads the store saw no change to since ``cutoff_us``; return (threads, messages).

        Each goes through ``delete_thread`` (tombstone, then Redis), re-checked as idle inside the store's
        delete. In write_behind a thread with appends still queued in the outbox is active and is skipped,
        and so is a thread whose Redis cannot be asked, since its queued appends would be invisible.
        """
        threads = messages = 0
        after: ThreadInfo | None = None
        while True:
            page = await self._tiers.on_store(self._retention.idle_threads(cutoff_us, after, batch))
            for t in page:
                key = ThreadKey(t.workspace_id, t.thread_id)
                if self._repo.write_behind:
                    used, pending = await self._pending(key)
                    if not used or pending is not None:
                        continue
                deleted = await self._repo.delete_thread(key, idle_before_us=cutoff_us)
                if deleted is not None:
                    threads += 1
                    messages += deleted[0]
            if len(page) < batch:
                return threads, messages
            after = page[-1]

    async def trim_old_messages(self, cutoff_us: int, batch: int) -> tuple[int, int]:
        """Retention: delete messages created before ``cutoff_us`` in batches; return (messages, threads touched).

        A thread that lost messages has its cached window dropped (refilled from the store on the next
        read, so no deleted message is served) and its write_behind counted length lowered; if Redis
        cannot be reached the thread is marked for repair, which drops the window before Redis is used.
        """
        messages = 0
        touched: set[ThreadKey] = set()
        while True:
            trimmed = await self._tiers.on_store(self._retention.trim_messages(cutoff_us, batch))
            for t in trimmed:
                messages += t.count
                touched.add(t.key)
                if self._tiers.cache is not None:
                    await self._trim_cached(t)
            if sum(t.count for t in trimmed) < batch:
                return messages, len(touched)

    async def _pending(self, key: ThreadKey) -> tuple[bool, tuple[int, int] | None]:
        return await self._tiers.on_cache(key.bucket, lambda c: c.pending_seq(key))

    async def _trim_cached(self, trimmed: Trimmed) -> None:
        done, _ = await self._tiers.on_cache(
            trimmed.key.bucket, lambda c: c.trim_thread(trimmed.key, trimmed.incarnation, trimmed.count)
        )
        if not done:
            key = trimmed.key
            await self._tiers.mark_thread(key)
