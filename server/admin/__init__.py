"""The operator's tool: ``python -m server admin …`` (or ``cipherdrop-server admin``).

* :mod:`.cli`: the subcommands and their exit codes;
* :mod:`.unused`: the clients that never stored a file (``unused``, ``purge-unused``);
* :mod:`.common`: what the commands share (exit codes, the stores, the folder's lock);
* :mod:`.verify`: every stored file against the size and cksum recorded at install;
* :mod:`.output`: aligned text, or JSON for scripts.

Commands that only look open the database read-only and run beside a server;
``delete-client`` changes the data folder, so it takes the folder's lock and
refuses while a server holds it (docs/OPERATING.md).
"""
