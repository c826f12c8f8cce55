"""Token budgets: the estimate, and a selection that never splits a tool call from its results."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatmem.v1 import resources_pb2 as r
from server.services import budget
from server.services.context_block import line_text


def text(role: int, body: str, tokens: int = 0, seq: int = 0) -> r.Message:
    return r.Message(role=role, seq=seq, content=body, token_count=tokens)  # type: ignore[arg-type]


def calls(*ids: str, tokens: int = 0) -> r.Message:
    parts = [r.Part(tool_call=r.ToolCall(id=i, name="lookup", arguments='{"q": 1}')) for i in ids]
    return r.Message(role=r.ROLE_ASSISTANT, parts=parts, token_count=tokens)


def results(*ids: str, tokens: int = 0) -> r.Message:
    parts = [r.Part(tool_result=r.ToolResult(tool_call_id=i, parts=[r.Part(text="42")])) for i in ids]
    return r.Message(role=r.ROLE_TOOL, parts=parts, token_count=tokens)


def test_the_estimate_is_a_quarter_of_the_text_bytes_rounded_up() -> None:
    assert budget.estimate_tokens(text(r.ROLE_USER, "")) == 1
    assert budget.estimate_tokens(text(r.ROLE_USER, "abcd")) == 1
    assert budget.estimate_tokens(text(r.ROLE_USER, "abcde")) == 2
    assert budget.estimate_tokens(text(r.ROLE_USER, "é" * 4)) == 2  # 8 UTF-8 bytes
    # lookup (6) + {"q": 1} (8) = 14 bytes -> 4; a result's text "42" -> 1
    assert budget.estimate_tokens(calls("a")) == 4
    assert budget.estimate_tokens(results("a")) == 1
    thinking = r.Message(parts=[r.Part(reasoning=r.Reasoning(text="hmm!", signature=b"x" * 400))])
    assert budget.estimate_tokens(thinking) == 1  # the opaque signature is not text
    assert budget.tokens(text(r.ROLE_USER, "abcdefgh", tokens=7)) == 7  # the client's count wins


def test_a_result_brings_its_call_and_everything_between() -> None:
    thread = [
        text(r.ROLE_USER, "q", 1),
        calls("a", "b", tokens=1),
        results("a", tokens=1),
        results("b", tokens=1),
        text(r.ROLE_ASSISTANT, "done", 1),
    ]
    assert budget.select(thread, 1, complete=True).kept == [4]
    # 2 or 3 tokens cannot hold the unit [call, result a, result b] (3) plus the answer (1)
    assert budget.select(thread, 3, complete=True).kept == [4]
    assert budget.select(thread, 4, complete=True).kept == [1, 2, 3, 4]
    assert budget.select(thread, 5, complete=True).kept == [0, 1, 2, 3, 4]


def test_an_orphan_result_is_dropped_alone_or_asks_for_more_history() -> None:
    thread = [results("gone", tokens=1), text(r.ROLE_USER, "q", 1)]
    chosen = budget.select(thread, 10, complete=True)
    assert (chosen.kept, chosen.needs_more) == ([1], False)
    partial = budget.select(thread, 10, complete=False)
    assert partial.needs_more


def test_a_pending_call_without_results_yet_is_returned() -> None:
    thread = [text(r.ROLE_USER, "q", 1), calls("a", tokens=1)]
    assert budget.select(thread, 2, complete=True).kept == [0, 1]


def test_the_prefix_counts_whole_messages_in_order() -> None:
    head = [text(r.ROLE_SYSTEM, "s", 2), text(r.ROLE_DEVELOPER, "d", 2), text(r.ROLE_USER, "u", 1)]
    assert budget.leading_prefix(head) == 2
    assert budget.fit_prefix(head[:2], 3) == (1, 2)


def test_the_block_spells_out_calls_results_and_media() -> None:
    call = r.Message(
        role=r.ROLE_ASSISTANT,
        parts=[
            r.Part(text="Let me check."),
            r.Part(reasoning=r.Reasoning(text="private")),
            r.Part(tool_call=r.ToolCall(id="c1", name="weather", arguments='{"city":"Paris"}')),
        ],
    )
    assert line_text(call) == 'Let me check. [tool call weather id=c1: {"city":"Paris"}]'
    failed = r.Message(
        parts=[r.Part(tool_result=r.ToolResult(tool_call_id="c1", is_error=True, parts=[r.Part(text="timeout")]))]
    )
    assert line_text(failed) == "[tool result error id=c1: timeout]"
    image = r.Message(parts=[r.Part(media=r.Media(uri="https://x/cat.png", mime_type="image/png"))])
    assert line_text(image) == "[image/png https://x/cat.png]"


@st.composite
def threads(draw: st.DrawFn) -> list[r.Message]:
    """Threads of plain turns and tool rounds (parallel calls, results in one or several messages)."""
    out: list[r.Message] = []
    n_rounds = draw(st.integers(0, 8))
    counter = 0
    for _ in range(n_rounds):
        out.append(text(r.ROLE_USER, "x" * draw(st.integers(0, 30))))
        if draw(st.booleans()):
            width = draw(st.integers(1, 3))
            ids = [f"c{counter + k}" for k in range(width)]
            counter += width
            out.append(calls(*ids, tokens=draw(st.integers(0, 5))))
            if draw(st.booleans()):
                out.append(results(*ids, tokens=draw(st.integers(0, 5))))
            else:
                out.extend(results(i, tokens=draw(st.integers(0, 5))) for i in ids)
        out.append(text(r.ROLE_ASSISTANT, "y" * draw(st.integers(0, 30))))
    return out


@settings(max_examples=300, deadline=None)
@given(thread=threads(), data=st.data())
def test_no_budget_ever_splits_a_pair_or_is_exceeded(thread: list[r.Message], data: st.DataObject) -> None:
    total = sum(budget.tokens(m) for m in thread)
    max_tokens = data.draw(st.integers(0, total + 2))
    chosen = budget.select(thread, max_tokens, complete=True)
    kept = [thread[i] for i in chosen.kept]
    assert sum(budget.tokens(m) for m in kept) == chosen.used <= max_tokens
    kept_calls = {p.tool_call.id for m in kept for p in m.parts if p.WhichOneof("kind") == "tool_call"}
    kept_answers = {p.tool_result.tool_call_id for m in kept for p in m.parts if p.WhichOneof("kind") == "tool_result"}
    assert kept_calls == kept_answers | (kept_calls - _answered(thread))
    assert kept_answers <= kept_calls
    # a suffix of the thread: the newest messages, with nothing skipped in between
    if chosen.kept:
        assert chosen.kept == list(range(chosen.kept[0], len(thread)))
    if max_tokens >= total:
        assert len(kept) == len(thread)


def _answered(thread: list[r.Message]) -> set[str]:
    return {p.tool_result.tool_call_id for m in thread for p in m.parts if p.WhichOneof("kind") == "tool_result"}


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_a_budget_too_small_for_the_newest_message_returns_nothing(max_tokens: int) -> None:
    assert budget.select([text(r.ROLE_USER, "a long question here")], max_tokens, complete=True).kept == []
