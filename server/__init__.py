"""cipherdrop's server: one thread, one selectors loop, SQLite and a folder."""
