"""Generated from protos/chatmem/v1 by clients/python/scripts/gen_protos.py. Do not edit."""
