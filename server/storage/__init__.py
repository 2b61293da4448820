"""Where the server keeps things: SQLite (``db``) and the received files (``files``)."""
