"""Missing seqs from runs of received ones.

Pure: a run is an inclusive ``(first, last)`` range of seqs that arrived. The store
keeps a sensor's runs (``seq_runs``, plus deltas not folded in yet, which may
overlap them or each other); this turns what it read into the gaps a status
answer lists.
"""

from __future__ import annotations

from collections.abc import Iterable

Run = tuple[int, int]


def gaps(runs: Iterable[Run], *, above: int, below: int, limit: int) -> list[Run]:
    """The inclusive ranges of seqs ``s`` with ``above < s < below`` that no run
    covers, lowest first, at most ``limit`` of them.

    ``runs`` may come in any order and overlap. The bounds are not themselves
    reported: a status passes the highest seq retention removed as ``above`` and
    the sensor's last seq as ``below``.
    """
    found: list[Run] = []
    wanted = above + 1  # the lowest seq not known to be covered
    for first, last in sorted(runs):
        if len(found) >= limit or wanted >= below:
            return found
        if first > wanted:
            found.append((wanted, min(first, below) - 1))
        wanted = max(wanted, last + 1)
    if wanted < below and len(found) < limit:
        found.append((wanted, below - 1))
    return found
