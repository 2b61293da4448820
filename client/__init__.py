"""cipherdrop's client: a blocking client over the sans-I/O protocol package."""
