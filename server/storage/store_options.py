"""``--metadata URL`` and ``--blobs URL`` on a command line: the server's and ``admin``'s.

The server chooses its stores with them; ``admin`` is given the server's, to
find the same stores (:mod:`.factory` opens them).
"""

from __future__ import annotations

import argparse

from .factory import BLOBS_OPTION, METADATA_OPTION, blobs_help, metadata_help

#: What each store keeps, as the server's ``--help`` says it.
METADATA_KEEPS = "where clients and file rows are kept"
BLOBS_KEEP = "where received files' content is kept"


def add_store_options(
    parser: argparse.ArgumentParser, default: object = None, the_servers: bool = False
) -> None:
    """Add ``--metadata`` and ``--blobs`` (each a URL) to ``parser``.

    ``the_servers``: the options name the stores a server was given (``admin``),
    rather than choose them.
    """
    for option, keeps, forms in (
        (METADATA_OPTION, METADATA_KEEPS, metadata_help),
        (BLOBS_OPTION, BLOBS_KEEP, blobs_help),
    ):
        what = f"the server's {option}, if it was given one" if the_servers else keeps
        parser.add_argument(option, metavar="URL", default=default, help=f"{what}: {forms()}")
