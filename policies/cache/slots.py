"""The slots that change an answer: numbers, names, dates, negations and opposites.

Two questions that differ in one of them ask different things however close their embeddings are
("capital of France" / "capital of Germany" have cosine 0.9+). ``conflict(a, b)`` names the first slot
in which they disagree, or None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9+#.'-]*[A-Za-z0-9+#]|[A-Za-z]|\d+(?:[.,]\d+)*")
_SWITCH = re.compile(r"\b(turn|turning|switch|switching|toggle)((?:\s+[\w-]+){0,3}?)\s+(on|off)\b", re.IGNORECASE)
_PARTICLE = re.compile(r"\b(on|off)(?=\s*(?:[,.?!;:]|$))", re.IGNORECASE)
_NUMBER = re.compile(r"^\d+(?:[.,]\d+)*$")

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 1_000_000, "billion": 1_000_000_000, "half": 0.5, "dozen": 12,
    "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th",
}

_DATES = {
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "weekend", "weekday",
    "january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
    "november", "december", "today", "tomorrow", "yesterday", "christmas", "easter", "thanksgiving", "new", "year", "spring", "summer", "autumn", "fall", "winter",
}
# only these of _DATES carry a date on their own (the rest only as part of one: "new year")
_DATE_WORDS = _DATES - {"new", "year", "fall", "may"}

_NEGATIONS = {"not", "no", "never", "without", "none", "nobody", "nothing", "neither", "nor", "cannot",
              "can't", "don't", "doesn't", "didn't", "isn't", "aren't", "wasn't", "weren't", "won't",
              "wouldn't", "shouldn't", "couldn't", "mustn't", "haven't", "hasn't", "hadn't"}

# Each group: words that fill the same slot with different meanings. Synonyms share one set.
_OPPOSITES: tuple[tuple[frozenset[str], ...], ...] = tuple(tuple(frozenset(s.split()) for s in group) for group in (
    # what to do to a thing: any two different actions ask different questions
    ("enable activate turnon", "disable deactivate turnoff off", "pause suspend",
     "read load open", "parse", "write save dump", "upload", "download", "import", "export",
     "encrypt", "decrypt", "compress zip", "decompress unzip extract", "encode serialize", "decode deserialize",
     "add insert append create", "remove delete drop erase", "rename", "merge combine", "split", "copy duplicate",
     "move", "lock", "unlock", "show display", "hide", "install", "uninstall", "login", "logout", "push", "pull",
     "stash", "revert", "reset", "rebase", "share", "sign", "verify", "validate", "stream", "backup", "restore",
     "start launch", "stop halt", "reboot restart", "terminate", "resize", "sort", "filter", "buy purchase",
     "sell"),
    ("increase raise higher up boost more", "decrease lower reduce down less"),
    ("ascending", "descending reverse"),
    ("lose", "gain"),
    ("rise", "fall"),
    ("min minimum smallest lowest least", "max maximum largest highest biggest most"),
    ("mean average", "median", "mode"),
    ("first", "last final latest"),
    ("morning", "afternoon", "evening", "night tonight"),
    ("before", "after"),
    ("to into", "from"),
    ("with", "without"),
    ("left", "right", "inner", "outer", "cross"),
    ("active", "passive"),
    ("public", "private"),
    ("domestic", "international"),
    ("synonym", "antonym"),
    ("uppercase upper", "lowercase lower", "title"),
    ("key keys", "value values", "length size", "name names", "date time", "extension type"),
    ("rows row", "columns column"),
    ("horizontal", "vertical"),
    ("input", "output"),
    ("send", "receive"),
    ("sync synchronous", "async asynchronous"),
    ("hot warm", "cold cool"),
    ("true", "false"),
    ("success", "failure"),
    ("derivative", "integral"),
    ("freeze freezes frozen", "boil boils boiling", "evaporate evaporates", "condense condenses", "melt melts"),
    ("north", "south", "east", "west"),
    ("male", "female"),
    ("serve", "backhand", "forehand", "volley"),
))


@dataclass(frozen=True, slots=True)
class Slots:
    tokens: frozenset[str]        # every word, lowercased and stemmed
    numbers: frozenset[str]
    dates: frozenset[str]
    negations: int
    names: frozenset[str]         # capitalized words not at the start of a sentence
    opposites: tuple[frozenset[int], ...]  # per group in _OPPOSITES: which of its sets the text uses


def _variants(word: str) -> set[str]:
    """The word and what it might be without an inflection ("encoded" -> encod, encode)."""
    out = {word, _stem(word)}
    if word.endswith(("ed", "es")):
        out.add(word[:-1])
    if word.endswith("ing"):
        out.add(word[:-3] + "e")
    return out


def _stem(word: str) -> str:
    word = word.lower().removesuffix("'s").removesuffix("’s")
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _number(token: str) -> str:
    value = token.replace(",", "")
    try:
        number = float(value)
    except ValueError:
        return token
    return str(int(number)) if number.is_integer() else str(number)


@lru_cache(maxsize=4096)
def extract(text: str) -> Slots:
    """The answer-changing slots of one question (cached: a cached entry's text is checked many times)."""
    # "turn (dark mode) on/off" decides the answer; a bare "on" is mostly a preposition ("on Windows")
    text = _SWITCH.sub(lambda m: f" turn{m.group(3).lower()}{m.group(2)} ", text)
    text = _PARTICLE.sub(lambda m: " turn" + m.group(1).lower(), text)   # "turn dark mode on?"
    words = _WORD.findall(text)
    lowered = [w.lower() for w in words]
    numbers: set[str] = set()
    for raw, low in zip(words, lowered, strict=True):
        if _NUMBER.match(raw):
            numbers.add(_number(raw))
        elif low in _NUMBER_WORDS:
            numbers.add(str(_NUMBER_WORDS[low]))
    dates = {w for w in lowered if w in _DATE_WORDS}
    lowered_set = set(lowered)
    if "new" in lowered_set and "year" in lowered_set:
        dates.add("new year")
    negations = sum(1 for w in lowered if w in _NEGATIONS or w.endswith("n't"))
    names: set[str] = set()
    for match in _WORD.finditer(text):
        raw = match.group()
        before = text[:match.start()].rstrip()
        if raw[0].isupper() and raw != "I" and before and before[-1] not in ".?!:\"'(":
            names.add(_stem(raw))
    stems = {variant for w in lowered for variant in _variants(w)}
    opposites = tuple(
        frozenset(i for i, members in enumerate(group) if stems & members) for group in _OPPOSITES)
    return Slots(tokens=frozenset(stems), numbers=frozenset(numbers), dates=frozenset(dates), negations=negations,
                 names=frozenset(names), opposites=opposites)


def conflict(a: str, b: str) -> str | None:
    """The first answer-changing slot in which two questions differ ("number", "date", "negation",
    "name", "opposite"), or None when none does."""
    x, y = extract(a), extract(b)
    if x.numbers != y.numbers:
        return "number"
    if x.dates != y.dates:
        return "date"
    if x.negations != y.negations:
        return "negation"
    # a name in one must appear (in any case) in the other: "What's France's capital" starts with it
    if not (x.names <= y.tokens and y.names <= x.tokens):
        return "name"
    for used_x, used_y in zip(x.opposites, y.opposites, strict=True):
        # each uses a meaning the other lacks ("to" vs "from"); "to ... into" vs "from ... into" also counts
        if used_x - used_y and used_y - used_x:
            return "opposite"
    return None
