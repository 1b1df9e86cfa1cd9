"""Caller numbers: E.164 normalization (phonenumbers), ignore rules and masking.

phonenumbers.parse costs ~16 µs a number; a year of a mid-size hotline has
~300,000 distinct callers, so an import would spend most of its time there.
`Normalizer` therefore works out, per *shape* of an all-digit national number
(its length and first four digits), what phonenumbers does to numbers of that
shape — which country code it prepends and how many leading digits (the
national prefix) it drops — by asking it about two representatives of the
shape (the prefix padded with 2s and with 5s). When both give the same simple
rule, every number of that shape is normalized by it; otherwise that shape
always goes through phonenumbers. The result depends only on the input, never
on which numbers were seen first.

Where the two differ: for valid numbers they agree (tests/unit/test_numbers.py
checks generated valid numbers of several regions against phonenumbers). For
some invalid inputs phonenumbers guesses an international call: it reads the
Chinese IP-dialling prefix 179xx as an exit code, so "17978008443" becomes
"+8443"; the shape rule keeps it as "+8617978008443", the number the caller
actually presented.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers

_DIGITS = re.compile(r"^\d+$")
_CLEAN = re.compile(r"[\s().\-/]")

#: caller-ID values that mean "no number": anonymous, withheld, placeholders
ANONYMOUS = frozenset(
    {"", "anonymous", "unknown", "<unknown>", "<null>", "null", "private", "restricted",
     "unavailable", "withheld", "none", "s", "0"}
)


@dataclass(frozen=True, slots=True)
class NumberRules:
    default_region: str = "CN"
    internal_max_digits: int = 5
    ignore: frozenset[str] = frozenset()
    ignore_patterns: tuple[str, ...] = ()


class Normalizer:
    """Turns raw caller-ID strings into E.164, or None for numbers to ignore."""

    def __init__(self, rules: NumberRules) -> None:
        self.rules = rules
        self._ignore = {s.strip().lower() for s in rules.ignore}
        self._ignore_res = [re.compile(p) for p in rules.ignore_patterns]
        self._cache: dict[str, str | None] = {}
        self._shapes: dict[tuple[int, str], tuple[str, int] | None] = {}
        #: the same rules as ("+<country code>", digits dropped), per length then first four digits:
        #: the lookup an import makes for every caller (no tuple key to build and hash)
        self._fast: dict[int, dict[str, tuple[str, int] | None]] = {}
        self._max = rules.internal_max_digits
        self._plain = not self._ignore and not self._ignore_res

    def normalize(self, raw: str | None) -> str | None:
        if raw is None:
            return None
        if raw.isdigit() and raw.isascii() and (self._plain or (raw not in self._ignore and not self._ignore_res)):
            # the common case: a national number as the PBX logs it
            n = len(raw)
            if n <= self._max:
                return None
            head = raw[:4]
            rule = self._fast.get(n, _NO_SHAPES).get(head, _MISS)
            if rule is _MISS:
                learned = self._rule(n, head)
                rule = None if learned is None else ("+" + learned[0], learned[1])
                self._fast.setdefault(n, {})[head] = rule
            if rule is not None:
                prefix, drop = rule  # type: ignore[misc]
                return prefix + raw[drop:] if drop else prefix + raw
        hit = self._cache.get(raw, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        result = self._normalize(raw)
        if len(self._cache) < 200_000:
            self._cache[raw] = result
        return result

    def why_ignored(self, raw: str | None) -> str | None:
        """The reason a raw number is not a callable caller, or None."""
        value = (raw or "").strip()
        if value.lower() in ANONYMOUS:
            return "anonymous"
        if value.lower() in self._ignore:
            return "ignored"
        for rx in self._ignore_res:
            if rx.search(value):
                return "ignored-pattern"
        digits = _CLEAN.sub("", value).lstrip("+")
        if digits.isdigit() and len(digits) <= self.rules.internal_max_digits:
            return "internal"
        if self.normalize(value) is None:
            return "unparseable"
        return None

    def _rule(self, length: int, head: str) -> tuple[str, int] | None:
        key = (length, head)
        rule = self._shapes.get(key, _MISS)
        if rule is _MISS:
            rule = None
            if length > len(head):
                reps = [head + d * (length - len(head)) for d in "25"]
                rules = {_learn(r, self._parse(r)) for r in reps}
                if len(rules) == 1:
                    rule = rules.pop()
            self._shapes[key] = rule
        return rule  # type: ignore[return-value]

    def _normalize(self, raw: str) -> str | None:
        value = raw.strip()
        if value.lower() in ANONYMOUS or value.lower() in self._ignore:
            return None
        for rx in self._ignore_res:
            if rx.search(value):
                return None
        compact = _CLEAN.sub("", value)
        digits = compact[1:] if compact.startswith("+") else compact
        if not (digits.isascii() and digits.isdigit()) or len(digits) <= self.rules.internal_max_digits:
            return None
        if compact.startswith("+") or compact.startswith("00"):
            return self._parse(compact)
        rule = self._rule(len(digits), digits[:4])
        if rule is not None:
            return f"+{rule[0]}{digits[rule[1]:]}"
        return self._parse(digits)

    def _parse(self, value: str) -> str | None:
        try:
            parsed = phonenumbers.parse(value, self.rules.default_region)
        except phonenumbers.NumberParseException:
            return None
        # numbers phonenumbers cannot vouch for (is_possible_number False) are kept in
        # the same stable form rather than lose a caller
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _learn(digits: str, result: str | None) -> tuple[str, int] | None:
    """The (country code, leading digits dropped) rule that turns digits into result."""
    if result is None or not result.startswith("+"):
        return None
    body = result[1:]
    for drop in range(0, 4):
        rest = digits[drop:]
        if body.endswith(rest):
            cc = body[: len(body) - len(rest)]
            if cc.isdigit() and 1 <= len(cc) <= 3:
                return cc, drop
    return None


class _Miss:
    pass


_MISS = _Miss()
_NO_SHAPES: dict[str, tuple[str, int] | None] = {}


#: characters `mask` always hides, and the most it shows at the start (country code and a few digits)
MASK_HIDDEN, MASK_HEAD = 4, 6


def mask(number: str | None) -> str:
    """+8613812345678 -> +86138****5678: enough to tell callers apart in a log, not to call them.

    At most the first 6 characters (with the '+') and the last 4 (2 when the number is shorter than 12
    characters) are shown, and at least 4 are always hidden: +12025550123 -> +120****0123,
    +865550101 -> +865****01. Numbers of 6 characters or fewer are starred whole.
    """
    if not number:
        return "-"
    n = len(number)
    if n <= MASK_HEAD:
        return "*" * n
    tail = 4 if n >= 12 else 2
    head = min(MASK_HEAD, n - tail - MASK_HIDDEN)
    return number[:head] + "*" * (n - head - tail) + number[-tail:]


def normalizer_from(
    default_region: str, internal_max_digits: int, ignore: Iterable[str], patterns: Iterable[str]
) -> Normalizer:
    return Normalizer(
        NumberRules(default_region, internal_max_digits, frozenset(ignore), tuple(patterns))
    )
