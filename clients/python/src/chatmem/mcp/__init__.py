"""chatmem-mcp: an MCP server exposing a chatmem server's thread memory and preferences as tools (extra mcp)."""

try:
    import mcp as _mcp  # noqa: F401 - only to say which extra is missing
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("chatmem.mcp needs the mcp package: pip install 'chatmem[mcp]'") from exc

from chatmem.mcp.server import build_server

__all__ = ["build_server"]
