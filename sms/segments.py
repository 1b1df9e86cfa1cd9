"""How many SMS parts a text takes: GSM-7 (160 alone, 153 per part) or UCS-2 (70 alone, 67 per part)."""

from __future__ import annotations

from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: characters sent as ESC + one septet (they count twice)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    encoding: str        # "GSM-7" | "UCS-2"
    units: int           # septets or UTF-16 code units
    segments: int
    per_segment: int     # the limit that applied (160/153 or 70/67)

    def describe(self) -> str:
        return f"{self.encoding}, {self.units} units, {self.segments} segment{'s' if self.segments != 1 else ''}"


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def _fill(sizes: list[int], single: int, multi: int) -> int:
    """Parts needed when a multi-unit character is never split across parts."""
    total = sum(sizes)
    if total <= single:
        return 1 if total else 0
    parts, used = 1, 0
    for s in sizes:
        if used + s > multi:
            parts += 1
            used = 0
        used += s
    return parts


def count(text: str) -> SegmentInfo:
    if is_gsm7(text):
        sizes = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        n = _fill(sizes, 160, 153)
        return SegmentInfo("GSM-7", sum(sizes), n, 160 if n <= 1 else 153)
    sizes = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    n = _fill(sizes, 70, 67)
    return SegmentInfo("UCS-2", sum(sizes), n, 70 if n <= 1 else 67)
