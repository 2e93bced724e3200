"""Destination collisions: may a file be sent to its remote path? Pure rules, no I/O.

Two rows of an archive *meet* when their normalized remote paths are equal, or
one is a directory prefix of the other (``P`` and ``P/x``): sending one then
replaces, or turns into a directory, what the other put there. A verified copy
is never replaced, so a row that would do that is a *conflict*; a row whose
partner is still on its way waits for it (the older row goes first).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Meeting(enum.Enum):
    """How the destination of another row relates to a candidate's."""

    SAME = "same path"
    PARENT = "a parent directory of it"
    CHILD = "a path below it"


def meeting(key: str, other: str) -> Meeting | None:
    """How ``other`` (a normalized remote path) meets ``key``, or None when it does not."""
    if key == other:
        return Meeting.SAME
    if key.startswith(other + "/"):
        return Meeting.PARENT
    if other.startswith(key + "/"):
        return Meeting.CHILD
    return None


@dataclass(frozen=True)
class Partner:
    """What the rule needs to know of another row that meets a candidate."""

    id: int
    key: str
    md5: str | None
    #: Its destination holds its verified copy (remote md5 == local md5).
    verified: bool
    #: It may still be sent: not ignored, not removed, below the attempt limit.
    live: bool


class Action(enum.Enum):
    """What to do with a candidate row, from the least to the most restrictive."""

    SEND = "send"
    #: Another row's verified copy already holds these bytes: check it, send nothing.
    VERIFY_ONLY = "verify only"
    #: An older row that meets this one is not sent yet: it goes first.
    WAIT = "wait"
    #: Sending would replace or shadow another row's verified copy.
    CONFLICT = "conflict"


_ORDER = [Action.SEND, Action.VERIFY_ONLY, Action.WAIT, Action.CONFLICT]


@dataclass(frozen=True)
class Verdict:
    """The action for a candidate and the row that decided it."""

    action: Action
    other: Partner | None = None
    how: Meeting | None = None

    def describe(self) -> str:
        """Why, in words, naming the other row."""
        if self.other is None or self.how is None:
            return "nothing else goes there"
        where = f"file id {self.other.id} at {self.other.key!r} ({self.how.value})"
        if self.action is Action.CONFLICT:
            return f"sending it would replace or shadow the verified copy of {where}"
        if self.action is Action.WAIT:
            return f"waiting for the older {where}"
        return f"the verified copy of {where} holds the same md5"


def judge_pair(candidate_id: int, key: str, md5: str | None, other: Partner) -> Verdict:
    """The verdict of one other row on a candidate (see the module doc)."""
    how = meeting(key, other.key)
    if how is None or other.id == candidate_id:
        return Verdict(Action.SEND)
    same_bytes = how is Meeting.SAME and md5 is not None and md5 == other.md5
    if other.verified:
        return Verdict(Action.VERIFY_ONLY if same_bytes else Action.CONFLICT, other, how)
    if other.live and other.id < candidate_id:
        return Verdict(Action.WAIT, other, how)
    return Verdict(Action.SEND)


def judge(candidate_id: int, key: str, md5: str | None, others: Iterable[Partner]) -> Verdict:
    """The most restrictive verdict over every other row (ties: the lowest id decides)."""
    best = Verdict(Action.SEND)
    for other in others:
        verdict = judge_pair(candidate_id, key, md5, other)
        rank, best_rank = _ORDER.index(verdict.action), _ORDER.index(best.action)
        if rank > best_rank or (rank == best_rank and verdict.other is not None
                                and best.other is not None and verdict.other.id < best.other.id):
            best = verdict
    return best
