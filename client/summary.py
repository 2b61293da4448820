"""The per-file summary of a run: one line per file, and why a file failed."""

from __future__ import annotations

from typing import Sequence

from protocol.printable import printable

from .errors import ClientError, NetworkError
from .jobs import FileOutcome
from .units import format_bytes, plural


def reason(exc: ClientError) -> str:
    """Why a step failed, naming the step when the error knows it."""
    step = exc.step if isinstance(exc, NetworkError) else None
    return f"{step}: {exc}" if step else str(exc)


def describe_outcome(outcome: FileOutcome) -> str:
    """One line: the file, its size, and how it went (and why, if it failed)."""
    name = printable(outcome.path.name)
    result = outcome.result
    if outcome.error is not None:
        return f"{name}: failed: {reason(outcome.error)}"
    assert result is not None
    size = format_bytes(result.plan.orig_size)
    resends = "" if result.uploads == 1 else f" after {plural(result.uploads, 'upload')}"
    if result.verified:
        return f"{name}: {size} sent, {result.check} verified{resends}"
    return f"{name}: {size} sent, failed: the cksum still differed{resends} (gave up, 902)"


def summary_lines(outcomes: Sequence[FileOutcome]) -> list[str]:
    """The summary of a run: a count line, then one line per file in order."""
    verified = sum(outcome.verified for outcome in outcomes)
    failed = len(outcomes) - verified
    head = f"summary: {plural(len(outcomes), 'file')}, {verified} verified, {failed} failed"
    return [head, *(f"  {describe_outcome(outcome)}" for outcome in outcomes)]
