"""What the fuzz scripts share: the seed corpus and the atheris entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable


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
