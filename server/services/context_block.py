"""The prompt block of GetContext, in the seeds' invoking() format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from server.storage.models import Role

_ROLE_NAMES = {Role.USER: "user", Role.ASSISTANT: "assistant", Role.SYSTEM: "system", Role.TOOL: "tool"}
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
