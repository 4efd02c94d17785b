"""Activities: all I/O lives here, one module per external system; every activity is idempotent."""
