"""The prompt block of GetContext, in the seeds' invoking() format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chatmem.v1 import resources_pb2
from server.storage.models import Role

_ROLE_NAMES = {
    Role.USER: "user",
    Role.ASSISTANT: "assistant",
    Role.SYSTEM: "system",
    Role.TOOL: "tool",
    Role.DEVELOPER: "developer",
}
CONVERSATION_HEADER = "Previous conversation:"
PREFERENCES_HEADER = "User preferences:"


def render(
    messages: Sequence[tuple[Role, str]], preferences: Mapping[str, str], max_chars: int = 0
) -> tuple[str, int, int]:
    """Render the context block and say how much of the input it holds.

    Preferences (sorted by key) take the budget first because they are few and long-lived; then the
    newest messages that fit, shown oldest first. A line that does not fit whole is left out, never cut.

    Args:
        messages: (role, content) pairs, oldest first.
        preferences: key to value.
        max_chars: the most characters in the block; 0 means no limit.

    Returns:
        (block, messages included, preferences included).
    """
    # Each line below is charged its length plus one for a newline after it, but the block's last line
    # has none: the allowance is one more than the budget, so a block of exactly max_chars fits.
    allowance = max_chars + 1 if max_chars > 0 else None

    def fits(cost: int) -> bool:
        return allowance is None or used + cost <= allowance

    used = 0
    pref_lines: list[str] = []
    for key in sorted(preferences):
        line = f"{key}: {preferences[key]}"
        header = len(PREFERENCES_HEADER) + 1 if not pref_lines else 0
        if not fits(header + len(line) + 1):
            break
        used += header + len(line) + 1
        pref_lines.append(line)
    separator = 1 if pref_lines else 0
    msg_lines: list[str] = []
    for role, content in reversed(messages):
        line = f"{_ROLE_NAMES[role]}: {content}"
        header = len(CONVERSATION_HEADER) + 1 + separator if not msg_lines else 0
        if not fits(header + len(line) + 1):
            break
        used += header + len(line) + 1
        msg_lines.append(line)
    msg_lines.reverse()
    sections = []
    if msg_lines:
        sections.append("\n".join([CONVERSATION_HEADER, *msg_lines]))
    if pref_lines:
        sections.append("\n".join([PREFERENCES_HEADER, *pref_lines]))
    return "\n\n".join(sections), len(msg_lines), len(pref_lines)


def line_text(message: resources_pb2.Message) -> str:
    """Return a message as the block shows it: its text, with tool calls and results spelled out.

    Reasoning is left out (it is the model's scratchpad, not conversation), and media appear as
    ``[image/png https://...]``, so the model knows something was shown.
    """
    if not message.parts:
        return message.content
    pieces = [_piece(part) for part in message.parts]
    return " ".join(p for p in pieces if p)


def _piece(part: resources_pb2.Part) -> str:
    kind = part.WhichOneof("kind")
    if kind == "text":
        return part.text
    if kind == "tool_call":
        call = part.tool_call
        return f"[tool call {call.name} id={call.id}: {call.arguments}]"
    if kind == "tool_result":
        result = part.tool_result
        inner = " ".join(p for p in map(_piece, result.parts) if p)
        status = " error" if result.is_error else ""
        return f"[tool result{status} id={result.tool_call_id}: {inner}]"
    if kind == "media":
        return f"[{part.media.mime_type} {part.media.uri or 'inline'}]"
    return ""
