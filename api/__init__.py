"""The thin HTTP API: it starts workflows and reports their status; it never provisions itself."""
