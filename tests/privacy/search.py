"""Finding planted personal data in outputs, robustly and fast.

Each output text is read in several spellings (as is, percent/form-decoded, JSON `\\uXXXX` escapes
decoded). Digits are compared with separators removed: every run of digits joined by at most four
separators (spaces of any kind, `().-/+`, dashes) is reduced to its digits, and a planted phone
number leaks when its national significant number (at least 9 digits) is inside one such run; a
card, when all its digits are. Emails, tokens (and their secret part) and marker words are matched
verbatim, case-insensitively, against the words of the text. Matching runs on the set of distinct
words and digit runs of all outputs together, so hundreds of planted values against megabytes of
output stay fast; only a hit is attributed to the outputs that hold it.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tests.privacy.corpus import Planted

_DIGIT_RUN = re.compile(r"\d(?:[\s().\-/+\u2010-\u2015\u2212]{0,4}\d)*")
_NON_DIGIT = re.compile(r"\D")
_WORD = re.compile(r"[^\s\"'<>,;{}\[\]()|\\`]+")
_JSON_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})")  # escaped once or more (JSON in JSON)


def spellings(text: str) -> list[str]:
    out = [text]
    if "%" in text or "+" in text:
        out.append(urllib.parse.unquote_plus(text, errors="replace"))
        out.append(urllib.parse.unquote(text, errors="replace"))
    if "\\u" in text:
        out += [_JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), t) for t in list(out)]
    return out


@dataclass
class Index:
    words: set[str]
    digits: set[str]


def index(text: str) -> Index:
    words: set[str] = set()
    digits: set[str] = set()
    for t in spellings(text):
        words.update(w.lower() for w in _WORD.findall(t))
        for m in _DIGIT_RUN.finditer(t):
            d = _NON_DIGIT.sub("", m.group())
            if len(d) >= 7:
                digits.add(d)
    return Index(words, digits)


def needles(p: Planted) -> tuple[list[str], list[str]]:
    """(verbatim strings, digit strings) whose presence means `p` leaked."""
    if p.kind in ("phone", "card"):
        assert len(p.digits) >= 9, p
        return [], [p.digits]
    return [s.lower() for s in (p.value, *p.also)], []


@dataclass(frozen=True)
class Leak:
    output: str
    planted: Planted
    case: str


class Haystack:
    """The outputs, indexed once: `found(p)` anywhere (fast), `where(p)` names the outputs that hold it."""

    def __init__(self, outputs: Mapping[str, str]) -> None:
        self.outputs: dict[str, tuple[str, str]] = {}
        all_words: set[str] = set()
        all_digits: set[str] = set()
        for name, text in outputs.items():
            ix = index(text)
            self.outputs[name] = ("\n".join(ix.words), "\n".join(ix.digits))
            all_words |= ix.words
            all_digits |= ix.digits
        self.words = "\n".join(all_words)
        self.digits = "\n".join(all_digits)

    @staticmethod
    def _in(p: Planted, words: str, digits: str) -> bool:
        strs, digs = needles(p)
        return any(s in words for s in strs) or any(d in digits for d in digs)

    def found(self, p: Planted) -> bool:
        return self._in(p, self.words, self.digits)

    def where(self, p: Planted) -> list[str]:
        return [name for name, (w, d) in self.outputs.items() if self._in(p, w, d)] if self.found(p) else []


def find_leaks(outputs: Mapping[str, str], planted: Iterable[tuple[Planted, str]]) -> list[Leak]:
    """Every (output, planted value) where the value, in any spelling, is in the output."""
    hay = Haystack(outputs)
    return [Leak(name, p, case) for p, case in planted for name in hay.where(p)]


def describe(leaks: list[Leak], limit: int = 40) -> str:
    lines = [f"{len(leaks)} leaks:"]
    lines += [f"  {lk.output}: {lk.planted.kind} {lk.planted.value!r} (case {lk.case})" for lk in leaks[:limit]]
    return "\n".join(lines)
