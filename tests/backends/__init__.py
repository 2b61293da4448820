"""Throwaway database and storage servers for the tests of other backends (one module each)."""
