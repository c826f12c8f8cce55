"""Lossless converters: OpenAI Chat Completions, Anthropic and LangChain messages to chatmem messages and back."""
