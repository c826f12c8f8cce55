"""Generated from protos/chatmem/v1 by devtools/gen.py (buf.gen.yaml). Do not edit."""
