"""Lossless converters between chatmem messages and the OpenAI Chat Completions and Anthropic Messages formats.

Each ``from_*`` fills typed parts (which every format and GetContext can read) and keeps the original
JSON in the envelope; each ``to_*`` returns that original when its format matches, and otherwise
rebuilds the message from its parts. The LangChain converters live in ``chatmem.langchain``.
"""
