"""Named fault-injection points: where a test can make the process kill itself, exactly and not by timing.

Every keyed loop (tfnas.checkpoints) passes three points: `<key>:before` (about to start, nothing of it
done), `<key>:during` (after the middle step of its training, with no save at that step) and `<key>:after`
(its outputs and done marker written). `TFNAS_FAULT=<key>:<when>[,...]` in the environment makes the process
send itself SIGKILL at that point: no handler, no flush, no cleanup, as a machine that loses power. The
variable is read once, at import; unset, a point is one empty-set lookup.
"""
from __future__ import annotations

import os
import signal

WHEN = ("before", "during", "after")
_ARMED = frozenset(p.strip() for p in os.environ.get("TFNAS_FAULT", "").split(",") if p.strip())


def point(key: str, when: str) -> None:
    """Kills the process here if `<key>:<when>` is armed."""
    if _ARMED and f"{key}:{when}" in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)


def during_step(epochs: int, steps_per_epoch: int) -> int:
    """The global step (1-based) after which a loop's `during` point fires: the middle of its training,
    past its first epoch's save when it has more than one epoch, so that a kill there falls back to an
    older checkpoint."""
    return max(epochs * steps_per_epoch // 2 + 1, 1)
