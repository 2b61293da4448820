"""What the fuzz scripts share: the seed corpus, the atheris entry point, a fake loop port.

Nothing here imports the server at module level: fuzz_server.py imports it
after atheris has started instrumenting imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from server.app import App
    from server.channel import Channel

#: How the loop runs a channel's entry point (server.loop.serve).
Serve = Callable[["Channel", Callable[[], None]], None]


def write_seed_corpus(directory: Path, inputs: Iterable[bytes]) -> None:
    """Create a corpus folder holding one file per seed input."""
    directory.mkdir(parents=True)
    for number, data in enumerate(inputs):
        (directory / f"seed-{number:03d}").write_bytes(data)


def run_atheris(
    argv: list[str],
    seed_inputs: Callable[[], Iterable[bytes]],
    test_one_input: Callable[[bytes], None],
) -> None:
    """Fuzz with atheris; corpus folders named in argv that do not exist yet are seeded."""
    import atheris

    for arg in argv[1:]:
        if not arg.startswith("-") and not Path(arg).exists():
            write_seed_corpus(Path(arg), seed_inputs())
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


class FakePort:
    """The loop's side of the channels (server.channel.LoopPort), for a harness that plays the loop.

    As server/loop.py does: a channel whose turn ended with requests still
    buffered has a turn in the next round (:meth:`resume_backlog`), and the
    answers the channels hold go out at the round's end, once the round is
    durable (:meth:`end_round`). Every request may be taken: the per-address
    shares of a round are tested in tests/server/test_round_shares.py.
    """

    def __init__(self, app: App, serve: Serve) -> None:
        self._app = app
        self._serve = serve
        self._backlog: dict[Channel, None] = {}
        self._answering: list[Channel] = []

    def serve(self, channel: Channel, action: Callable[[], None]) -> None:
        self._serve(channel, action)

    def may_take_request(self, channel: Channel) -> bool:
        return True

    def request_taken(self, channel: Channel) -> None:
        pass

    def hold_answers(self, channel: Channel) -> None:
        self._answering.append(channel)

    def wants_turn(self, channel: Channel) -> None:
        self._backlog[channel] = None

    def defer(self, channel: Channel) -> bool:
        self._backlog[channel] = None
        return True

    def channel_closed(self, channel: Channel) -> None:
        self._backlog.pop(channel, None)

    def resume_backlog(self) -> list[Channel]:
        """A round's first work: a turn for each backlogged channel; returns them."""
        backlog = [channel for channel in self._backlog if not channel.closed]
        self._backlog.clear()
        for channel in backlog:
            self._serve(channel, channel.resume)
        return backlog

    def end_round(self) -> bool:
        """The round's end: commit it, then release and send the held answers; False if none."""
        answering, self._answering = self._answering, []
        unstored = self._app.end_round(durable=bool(answering))
        for channel in answering:
            if not channel.closed:

                def release(channel: Channel = channel) -> None:
                    channel.session.release(unstored)
                    channel.send_answers()

                self._serve(channel, release)
        return bool(answering)
