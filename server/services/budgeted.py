"""Token-budgeted window reads for GetHistory and GetContext: the cached window first, the store if needed."""

from __future__ import annotations

from dataclasses import dataclass

from chatmem.v1 import resources_pb2
from server.services import budget
from server.storage.codec import encode_message, split_framed
from server.storage.models import ThreadKey
from server.storage.repository import Repository
from server.storage.results import Served


@dataclass(frozen=True, slots=True)
class BudgetedWindow:
    """The chosen messages, oldest first, as stored bytes and parsed, and how they were served."""

    items: list[bytes]
    messages: list[resources_pb2.Message]
    served: Served


def _worse(a: Served, b: Served) -> Served:
    return Served(max(a.tier, b.tier), a.degraded or b.degraded)


async def read(
    repo: Repository, key: ThreadKey, limit: int, max_tokens: int, *, keep_prefix: bool = False
) -> BudgetedWindow:
    """Return the newest messages of a thread that fit ``max_tokens`` (see ``budget``).

    The cached window answers when the budget runs out inside it, so a budgeted read stays O(window);
    only a budget that reaches past the window reads up to ``limit`` messages from the store.

    Args:
        repo: the repository.
        key: the thread.
        limit: the most messages to consider.
        max_tokens: the budget.
        keep_prefix: keep the thread's leading system and developer messages first, within the budget.
    """
    asked = min(limit, repo.window)
    window = await repo.history(key, asked)
    served = window.served
    items = split_framed(window.framed)
    parsed = [resources_pb2.Message.FromString(i) for i in items]
    if asked < limit and len(items) == asked and budget.select(parsed, max_tokens, complete=False).needs_more:
        wider = await repo.history(key, limit)
        served = _worse(served, wider.served)
        items = split_framed(wider.framed)
        parsed = [resources_pb2.Message.FromString(i) for i in items]
    head_items: list[bytes] = []
    head: list[resources_pb2.Message] = []
    if keep_prefix and parsed:
        head_items, head, served = await _prefix(repo, key, items, parsed, served)
    n_head, used = budget.fit_prefix(head, max_tokens)
    head_items, head = head_items[:n_head], head[:n_head]
    after = head[-1].seq if head else 0
    rest = [(i, m) for i, m in zip(items, parsed, strict=True) if m.seq > after]
    chosen = budget.select([m for _, m in rest], max_tokens - used, complete=True)
    return BudgetedWindow(
        head_items + [rest[k][0] for k in chosen.kept], head + [rest[k][1] for k in chosen.kept], served
    )


async def _prefix(
    repo: Repository, key: ThreadKey, items: list[bytes], parsed: list[resources_pb2.Message], served: Served
) -> tuple[list[bytes], list[resources_pb2.Message], Served]:
    """Return the thread's leading system/developer messages, from the window when it starts the thread."""
    if parsed[0].seq == 1:
        n = budget.leading_prefix(parsed)
        return items[:n], parsed[:n], served
    first = await repo.list_messages(key, 0, False, budget.MAX_PREFIX)
    encoded = [encode_message(key.workspace_id, key.thread_id, m) for m in first]
    messages = [resources_pb2.Message.FromString(e) for e in encoded]
    n = budget.leading_prefix(messages)
    return encoded[:n], messages[:n], _worse(served, repo.served_by_store(key))
