"""Interop tests: the Python, TypeScript and Go clients on one server."""
