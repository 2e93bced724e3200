"""Retention policy: which verified local files may be deleted, and when.

A policy is an ordered list of rules matched against a row's remote path; the
first rule that matches decides. ``delete_after`` is seconds since registration
(or ``None``: never); ``keep_newest`` keeps that many of the most recently
registered verified files of the archive that the rule decides, whatever their
age. Under disk pressure a verified file that its rule would delete at all is
deleted before its delay is up, oldest first, until enough space is free.

Everything here is pure: the clock, the free space and the newest files are
passed in.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from .paths import normalized

#: The rule every file falls under without a policy file (``--delete-local-after``).
ALL = "**"
RULE_KEYS = ("match", "delete_after", "keep_newest")
NEVER = "never"


class PolicyError(ValueError):
    """A policy file that cannot be used; the text names the file and line."""


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a shell-style glob: ``*`` and ``?`` stay within one directory, ``**``
    spans any number of them (``**/`` also matches no directory), ``[...]`` is a class.

    Raises ValueError for an empty pattern or an unclosed ``[``.
    """
    if not pattern:
        raise ValueError("empty pattern")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            end = pattern.find("]", j)
            if end < 0:
                raise ValueError(f"unclosed '[' at position {i + 1}")
            body = pattern[i + 1:end]
            if body.startswith(("!", "^")):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z", re.DOTALL)
    except re.error as exc:
        raise ValueError(str(exc)) from None


def like_pattern(pattern: str) -> str:
    """An SQL LIKE pattern (escape ``\\``) matching at least every path the glob matches."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c in "*?[":
            if c == "[":
                end = pattern.find("]", i + 2)
                i = len(pattern) if end < 0 else end
            if not out or out[-1] != "%":
                out.append("%")
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class Rule:
    """One rule of a policy; ``line`` is where it starts in its file (0: none)."""

    match: str
    delete_after: float | None
    keep_newest: int = 0
    line: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", glob_regex(self.match))

    @classmethod
    def make(cls, match: str, delete_after: float | None, keep_newest: int = 0,
             line: int = 0) -> Rule:
        """A rule (ValueError for a bad glob)."""
        return cls(match, delete_after, keep_newest, line)

    def matches(self, remote_path: str) -> bool:
        """True when the glob matches the (normalized) remote path."""
        return self._regex.match(remote_path) is not None

    def describe(self) -> str:
        """How the rule reads: ``"**/tune/**" (never)``."""
        after = "never" if self.delete_after is None else f"after {self.delete_after:g} s"
        keep = f", keep newest {self.keep_newest}" if self.keep_newest else ""
        return f"{self.match!r} ({after}{keep})"

    def as_dict(self) -> dict[str, Any]:
        """The rule as it would be written in a policy file."""
        out: dict[str, Any] = {"match": self.match,
                               "delete_after": NEVER if self.delete_after is None
                               else self.delete_after}
        if self.keep_newest:
            out["keep_newest"] = self.keep_newest
        return out


@dataclass(frozen=True)
class Policy:
    """Rules in order; the first one matching a remote path decides."""

    rules: tuple[Rule, ...]
    source: str = ""

    @classmethod
    def delete_after(cls, seconds: float | None) -> Policy:
        """The policy of ``--delete-local-after`` alone: one rule for every file."""
        return cls((Rule.make(ALL, None if seconds is None else float(seconds)),),
                   source="--delete-local-after")

    def rule_for(self, remote_path: Any) -> Rule | None:
        """The first rule matching the row's remote path, or None."""
        try:
            path = normalized(remote_path)
        except (ValueError, TypeError):
            return None
        return next((r for r in self.rules if r.matches(path)), None)

    @property
    def keeps_newest(self) -> bool:
        """True when some rule keeps its newest files."""
        return any(r.keep_newest for r in self.rules)

    @property
    def shortest_delay(self) -> float | None:
        """The smallest delete_after of the rules that delete at all (None: none does)."""
        delays = [r.delete_after for r in self.rules if r.delete_after is not None]
        return min(delays) if delays else None

    def published(self) -> str:
        """The text stored in the catalog for other archives' agents: the plain number of
        seconds (or "never") for a single rule matching everything, else JSON."""
        if len(self.rules) == 1 and self.rules[0].match == ALL and not self.rules[0].keep_newest:
            after = self.rules[0].delete_after
            return NEVER if after is None else repr(float(after))
        return json.dumps({"rules": [r.as_dict() for r in self.rules]}, sort_keys=True)

    @classmethod
    def from_published(cls, value: Any) -> Policy | None:
        """Read what :meth:`published` wrote; None when it is not a policy."""
        if value == NEVER:
            return cls.delete_after(None)
        if not isinstance(value, str):
            return None
        try:
            seconds = float(value)
        except ValueError:
            seconds = None
        if seconds is not None:
            return cls.delete_after(seconds) if math.isfinite(seconds) and seconds >= 0 else None
        try:
            data = json.loads(value)
            return cls(tuple(_rule(item, 0) for item in data["rules"]), source="catalog")
        except (ValueError, TypeError, KeyError, _RuleError):
            return None


# ----------------------------------------------------------------- the file


class _RuleError(ValueError):
    pass


def _delay(value: Any) -> float | None:
    if value == NEVER:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _RuleError(f"delete_after must be a number of seconds or 'never', not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise _RuleError(f"delete_after must be a finite number >= 0, not {value!r}")
    return float(value)


def _rule(item: Any, line: int) -> Rule:
    if not isinstance(item, dict):
        raise _RuleError("a rule must be a mapping with 'match' and 'delete_after'")
    unknown = [k for k in item if k not in RULE_KEYS]
    if unknown:
        raise _RuleError(f"unknown key {unknown[0]!r} (a rule has {', '.join(RULE_KEYS)})")
    for key in ("match", "delete_after"):
        if key not in item:
            raise _RuleError(f"the rule has no {key!r}")
    match = item["match"]
    if not isinstance(match, str):
        raise _RuleError(f"match must be a glob text, not {match!r}")
    keep = item.get("keep_newest", 0)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise _RuleError(f"keep_newest must be a whole number >= 0, not {keep!r}")
    try:
        return Rule.make(match, _delay(item["delete_after"]), keep, line)
    except re.error as exc:
        raise _RuleError(f"bad glob {match!r}: {exc}") from None
    except _RuleError:
        raise
    except ValueError as exc:
        raise _RuleError(f"bad glob {match!r}: {exc}") from None


def parse_policy(text: str, source: str) -> Policy:
    """Read a policy from YAML text; PolicyError names ``source`` and the line."""

    def fail(line: int, why: str) -> PolicyError:
        return PolicyError(f"{source}:{line}: {why}")

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise fail(line, f"not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise fail(1, f"not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise fail(1, "the file must be a mapping with a 'rules' list")
    for key_node, value_node in root.value:
        if key_node.value != "rules":
            raise fail(key_node.start_mark.line + 1,
                       f"unknown key {key_node.value!r} (the file has only 'rules')")
        rules_node = value_node
    if "rules" not in data:
        raise fail(1, "no 'rules' list")
    items = data["rules"]
    if not isinstance(items, list) or not isinstance(rules_node, yaml.SequenceNode) or not items:
        raise fail(rules_node.start_mark.line + 1, "'rules' must be a non-empty list of rules")
    rules = []
    for item, node in zip(items, rules_node.value, strict=True):
        line = node.start_mark.line + 1
        if isinstance(item, dict) and isinstance(node, yaml.MappingNode):
            lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
        else:
            lines = {}
        try:
            rules.append(_rule(item, line))
        except _RuleError as exc:
            culprit = next((k for k in lines if k not in RULE_KEYS), None)
            if culprit is None:
                culprit = next((k for k in lines if k in str(exc)), None)
            raise fail(lines.get(culprit, line) if culprit else line, str(exc)) from None
    return Policy(tuple(rules), source=source)


def load_policy(path: str) -> Policy:
    """Read a policy file; PolicyError (one line naming the file and line) when it cannot."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the retention file: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return parse_policy(text, path)


# ----------------------------------------------------------------- free space


@dataclass(frozen=True)
class MinFree:
    """``--min-free``: a number of bytes, or a percentage of the file system's size."""

    bytes: int | None = None
    percent: float | None = None
    text: str = ""

    def threshold(self, total_bytes: int) -> int:
        """Free bytes wanted on a file system of this size."""
        if self.percent is not None:
            return math.ceil(total_bytes * self.percent / 100)
        return int(self.bytes or 0)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_min_free(text: str) -> MinFree:
    """``500M``, ``2G``, ``1048576`` or ``10%``; ValueError otherwise."""
    s = text.strip()
    if s.endswith("%"):
        try:
            percent = float(s[:-1])
        except ValueError:
            raise ValueError(f"not a percentage: {text!r}") from None
        if not 0 <= percent < 100 or not math.isfinite(percent):
            raise ValueError(f"a percentage must be from 0 to below 100: {text!r}")
        return MinFree(percent=percent, text=s)
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?", s, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size (bytes, or with K, M, G, T, or a percentage): {text!r}")
    return MinFree(bytes=int(float(m.group(1)) * _UNITS[m.group(2).upper()]), text=s)


@dataclass(frozen=True)
class Space:
    """Free and total bytes of one file system, and the free bytes wanted there."""

    path: str
    free: int
    total: int
    wanted: int

    @property
    def short(self) -> int:
        """Bytes to free to be at the mark (0 when there)."""
        return max(0, self.wanted - self.free)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "free": self.free, "total": self.total,
                "min_free": self.wanted, "short": self.short}


# ----------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Candidate:
    """A row as the policy sees it: ``filesystem`` is the device of its local file
    (None when it cannot be stat'ed), ``size`` the bytes its deletion frees."""

    id: int
    remote_path: Any
    timestamp: float
    verified: bool
    deletable: bool
    size: int = 0
    filesystem: int | None = None


@dataclass(frozen=True)
class Verdict:
    """What the policy says of one row: delete it or keep it, the rule and why."""

    id: int
    delete: bool
    rule: str | None
    reason: str
    for_space: bool = False


def newest_kept(policy: Policy, newest_first: Iterable[tuple[int, Any]]) -> set[int]:
    """Ids kept by ``keep_newest``: feed (id, remote path) of the archive's verified
    local files, newest registration first; reading stops once every such rule is full."""
    wanted = {r.match: r.keep_newest for r in policy.rules if r.keep_newest}
    kept: set[int] = set()
    if not wanted:
        return kept
    for file_id, remote in newest_first:
        rule = policy.rule_for(remote)
        if rule is None or wanted.get(rule.match, 0) <= 0 or rule.keep_newest == 0:
            continue
        wanted[rule.match] -= 1
        kept.add(file_id)
        if not any(v > 0 for v in wanted.values()):
            break
    return kept


def decide(candidates: Sequence[Candidate], policy: Policy, now: float,
           kept_newest: set[int], need: dict[int, int] | None = None) -> list[Verdict]:
    """The verdict on each candidate, in order (pass them oldest registration first).

    ``need``: bytes to free per file system; a verified file its rule would delete
    at all is then deleted early, until its file system is no longer short. It is
    reduced in place by the sizes of those files.
    """
    need = need if need is not None else {}
    out: list[Verdict] = []
    for c in candidates:
        rule = policy.rule_for(c.remote_path)
        label = rule.match if rule is not None else None

        def keep(why: str, c: Candidate = c, label: str | None = label) -> Verdict:
            return Verdict(c.id, False, label, why)

        if rule is None:
            out.append(keep("no rule matches its remote path"))
            continue
        if not c.verified:
            out.append(keep("not verified on the remote yet"))
            continue
        if not c.deletable:
            out.append(keep("registered as not deletable"))
            continue
        if rule.delete_after is None:
            out.append(keep(f"rule {rule.describe()} never deletes"))
            continue
        if c.id in kept_newest:
            out.append(keep(f"among the {rule.keep_newest} newest of rule {rule.describe()}"))
            continue
        age = now - c.timestamp
        if now > c.timestamp + rule.delete_after:
            out.append(Verdict(c.id, True, label, f"verified, {age:.0f} s old, rule "
                                                  f"{rule.describe()}"))
        elif c.filesystem is not None and need.get(c.filesystem, 0) > 0:
            need[c.filesystem] -= c.size
            out.append(Verdict(c.id, True, label, f"verified, {age:.0f} s old, rule "
                                                  f"{rule.describe()}: early, its file "
                                                  f"system is below --min-free",
                               for_space=True))
        else:
            out.append(keep(f"{age:.0f} s old, rule {rule.describe()}"))
    return out
