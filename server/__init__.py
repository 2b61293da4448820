"""cipherdrop's server: one thread, one selectors loop, a metadata store and a blob store."""
