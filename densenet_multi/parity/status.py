"""The statuses of the parity report, and the one rule that says which of them fail the run.

Every item, cell and worker of a run ends in one :class:`Status`. Whether a
status makes ``densenet-multi parity`` exit non-zero is decided by
:func:`fails_run` and nowhere else:

* ``FAIL``, ``error``, ``crashed``, ``timeout`` fail every run;
* ``pass`` never fails, and neither does ``n/a`` (a pair or copy chain that
  could not be compared because a member produced no data: that member's own
  cell carries the status that counts);
* everything else fails a run with ``--require-all`` (which the main job
  uses): ``missing``, ``unsupported``, ``not available``, ``ill-conditioned``,
  ``unpaired``, ``skipped``, ``regressed``. With ``--require-all`` a run
  passes only when every requested item was decided and passed;
* a status this module does not know always fails (a harness bug must not
  pass as a result).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

__all__ = ["Status", "fails_run", "from_outcome", "worst"]


class Status(str, Enum):
    """A result. The value is what reports show (``FAIL`` in capitals, so it stands out)."""

    PASS = "pass"
    FAIL = "FAIL"
    ERROR = "error"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    MISSING = "missing"
    UNSUPPORTED = "unsupported"
    NOT_AVAILABLE = "not available"
    #: a grad/trajectory item whose error is beyond the tolerance but within
    #: ILL_FACTOR times how far the reference itself moves under the conditioning probe
    ILL = "ill-conditioned"
    #: grad/trajectory with only the loss referenced and no other backend to pair with
    UNPAIRED = "unpaired"
    #: a requested check the worker did not run
    SKIPPED = "skipped"
    #: an error that grew past the baseline's (see baseline.py)
    REGRESSED = "regressed"
    NA = "n/a"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


_ALWAYS = frozenset({Status.FAIL, Status.ERROR, Status.CRASHED, Status.TIMEOUT})
_NEVER = frozenset({Status.PASS, Status.NA})
#: how bad a status is, for the worst of several (a cell is the worst of its items)
_RANK = {
    Status.PASS: 0, Status.NA: 0,
    Status.SKIPPED: 1, Status.UNPAIRED: 1, Status.ILL: 1, Status.NOT_AVAILABLE: 1,
    Status.MISSING: 2, Status.UNSUPPORTED: 2, Status.REGRESSED: 2,
    Status.TIMEOUT: 3, Status.CRASHED: 3, Status.ERROR: 3,
    Status.FAIL: 4,
}
_UNKNOWN_RANK = 5


def _known(status: object) -> Status | None:
    try:
        return Status(status)
    except ValueError:
        return None


def fails_run(status: object, *, require_all: bool = False) -> bool:
    """Does ``status`` make the run exit non-zero? The one place this is decided."""
    s = _known(status)
    if s is None:
        return True
    if s in _NEVER:
        return False
    return s in _ALWAYS or require_all


def worst(statuses: Iterable[object]) -> Status | str:
    """The worst of ``statuses`` (``n/a`` for none); an unknown status is worse than any."""
    out: Status | str = Status.NA
    rank = -1
    for st in statuses:
        s = _known(st)
        r = _UNKNOWN_RANK if s is None else _RANK[s]
        if r > rank:
            out, rank = (st if s is None else s), r  # type: ignore[assignment]
    return out


#: a worker's outcome ("ok", "missing", "crashed", "timeout") as a status
_OUTCOMES = {"ok": Status.PASS, "missing": Status.MISSING, "crashed": Status.CRASHED,
             "timeout": Status.TIMEOUT}


def from_outcome(outcome: str) -> Status | str:
    """The status of a worker outcome; an unknown outcome stays as it is (and fails)."""
    return _OUTCOMES.get(outcome, outcome)
