"""Async pagers over the List RPCs: iterate items across pages, fetching each page only when it is needed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a List RPC.

    Attributes:
        items: the page's items.
        next_page_token: pass it as ``page_token`` to continue after this page; ``""`` on the last page.
    """

    items: list[T]
    next_page_token: str


class AsyncPager(Generic[T]):
    """The items of a List RPC, fetched a page at a time.

    ``async for item in pager`` walks every item of every page; ``async for page in pager.pages()``
    walks the pages, whose ``next_page_token`` lets a later call resume where this one stopped.
    Each iteration starts again from the first page.

    Args:
        fetch: fetches the page at a token (``""`` for the first one).
        page_token: the token to start from.
    """

    def __init__(self, fetch: Callable[[str], Awaitable[Page[T]]], page_token: str = "") -> None:
        self._fetch = fetch
        self._start = page_token

    async def pages(self) -> AsyncIterator[Page[T]]:
        """Yield the pages in order, fetching each one when the previous one is used up."""
        token = self._start
        while True:
            page = await self._fetch(token)
            yield page
            if not page.next_page_token:
                return
            token = page.next_page_token

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.items:
                yield item

    async def collect(self) -> list[T]:
        """Return every item of every page, in order."""
        return [item async for item in self]
