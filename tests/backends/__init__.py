"""Real services the backend tests start from installed binaries, on loopback only."""
