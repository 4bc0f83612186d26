"""PII detection by pattern and checksum: e-mail addresses, phone numbers, payment cards (Luhn), IBANs
(ISO 7064 mod 97), US social security numbers (SSA's rules), IP addresses, API keys; plus a tenant's own
regex rules and word lists.

Chosen by measurement over Presidio (bench/pii_bench.py, docs/security.md): Presidio's analyzer needs a
spaCy model, which PyPI carries only as unofficial re-uploads; its recognizers for these kinds are patterns
and checksums too. Names and street addresses need a language model and are not detected here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

KINDS = ("email", "phone", "credit_card", "iban", "ssn", "ip_address", "api_key")


@dataclass(frozen=True, slots=True)
class Span:
    kind: str
    start: int
    end: int


def _luhn(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _iban(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ssn(text: str) -> bool:
    area, group, serial = text[:3], text[4:6], text[7:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (address.version == 6 and text.count(":") < 3)  # "12:30" is a time, not an address


_SSN_SHAPE = re.compile(r"\d{3}-\d{2}-\d{4}")


def _phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 9 <= digits <= 15 and not _SSN_SHAPE.fullmatch(text)  # an invalid SSN is still not a phone


_PATTERNS: dict[str, tuple[str, Callable[[str], bool] | None]] = {
    "email": (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", None),
    "api_key": (
        r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|gw-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|"
        r"ghp_[A-Za-z0-9]{36}|xox[bpas]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})",
        None,
    ),
    "iban": (r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", _iban),
    "credit_card": (r"\b\d(?:[ -]?\d){12,18}\b", _luhn),
    "ssn": (r"\b\d{3}-\d{2}-\d{4}\b", _ssn),
    "ip_address": (r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}\b", _ip),
    "phone": (
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?\d{1,4}|\(\d{1,4}\)|\d{2,5})(?:[ .-]\d{2,6}){1,4}(?![\w-])",
        _phone,
    ),
}


class Detector:
    """Finds PII spans in text. ``kinds``: which built-in kinds; ``rules``: name -> regex; ``words``: matched
    whole-word and case-insensitively (kind ``word``)."""

    def __init__(
        self, kinds: Iterable[str] = KINDS, rules: dict[str, str] | None = None, words: Iterable[str] = ()
    ) -> None:
        checks: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None]] = [
            (kind, re.compile(_PATTERNS[kind][0]), _PATTERNS[kind][1])
            for kind in _PATTERNS
            if kind in set(kinds)
        ]
        checks += [(name, re.compile(pattern), None) for name, pattern in (rules or {}).items()]
        listed = [w for w in words if w]
        if listed:
            alternatives = "|".join(re.escape(w) for w in sorted(listed, key=len, reverse=True))
            checks.append(("word", re.compile(rf"(?i)\b(?:{alternatives})\b"), None))
        self._checks = checks

    def find(self, text: str) -> list[Span]:
        """Non-overlapping spans, earlier kinds first where two overlap (an IBAN is not also a phone)."""
        spans: list[Span] = []
        taken: list[tuple[int, int]] = []
        for kind, pattern, valid in self._checks:
            for match in pattern.finditer(text):
                start, end = match.span()
                if valid is not None and not valid(match.group()):
                    continue
                if any(start < e and s < end for s, e in taken):
                    continue
                spans.append(Span(kind, start, end))
                taken.append((start, end))
        spans.sort(key=lambda s: s.start)
        return spans
