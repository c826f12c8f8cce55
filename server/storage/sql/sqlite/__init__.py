"""The embedded durable store on SQLite: one module per concern, composed in store.py."""
