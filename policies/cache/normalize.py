"""The canonical form of a question, before it is embedded and compared: one spelling per thing.

Abbreviations and their long forms (JS / JavaScript, NYC / New York City), currency and unit spellings
($100 / 100 USD / 100 dollars, km / kilometres), number words ("a cup" / "one cup" / "1 cup",
"five-year-old" / "5 year old", "twenty-five" / "25") become one form, so that two questions that say the same
thing embed alike and the slot checks (``slots.py``) compare values rather than spellings.
"""

from __future__ import annotations

import re
from functools import lru_cache

# case-sensitive: "US" the country, not "us"; "LA", not "la"
_ABBREVIATIONS_CASED = {
    "JS": "JavaScript",
    "TS": "TypeScript",
    "NYC": "New York City",
    "LA": "Los Angeles",
    "SF": "San Francisco",
    "UK": "United Kingdom",
    "U.K.": "United Kingdom",
    "US": "United States",
    "U.S.": "United States",
    "USA": "United States",
    "U.S.A.": "United States",
    "UAE": "United Arab Emirates",
    "EU": "European Union",
    "DC": "Washington DC",
    "Washington DC": "Washington DC",
    "D.C.": "Washington DC",
    "Washington D.C.": "Washington DC",
    "PR": "pull request",
    "PRs": "pull requests",
    "MR": "merge request",
    "VM": "virtual machine",
    "VMs": "virtual machines",
    "ML": "machine learning",
    "AI": "artificial intelligence",
    "DB": "database",
    "DBs": "databases",
    "OS": "operating system",
    "CLI": "command line",
    "K8s": "Kubernetes",
    "k8s": "Kubernetes",
    "Golang": "Go",
    "golang": "Go",
    "Postgres": "PostgreSQL",
    "postgres": "PostgreSQL",
    "py": "Python",
    "C sharp": "C#",
    "NodeJS": "Node.js",
    "nodejs": "Node.js",
    "Node": "Node.js",
}
# case-insensitive (whole words)
_ABBREVIATIONS = {
    "db": "database",
    "dbs": "databases",
    "repo": "repository",
    "repos": "repositories",
    "env var": "environment variable",
    "env vars": "environment variables",
    "env": "environment",
    "config": "configuration",
    "configs": "configurations",
    "app": "application",
    "apps": "applications",
    "dir": "directory",
    "dirs": "directories",
    "doc": "document",
    "docs": "documents",
    "pic": "picture",
    "pics": "pictures",
    "info": "information",
    "approx": "approximately",
    "w/o": "without",
    "w/": "with",
    "pls": "please",
    "plz": "please",
    "thx": "thanks",
    "u": "you",
    "ur": "your",
    "b4": "before",
}
# currencies and units: every spelling to one token (lowercase), longest spellings first
_UNITS = {
    "usd": [
        "us dollars",
        "us dollar",
        "u.s. dollars",
        "american dollars",
        "dollars",
        "dollar",
        "usd",
        "bucks",
    ],
    "eur": ["euros", "euro", "eur"],
    "gbp": ["british pounds", "pounds sterling", "pound sterling", "gbp", "quid"],
    "jpy": ["japanese yen", "yen", "jpy"],
    "chf": ["swiss francs", "swiss franc", "chf"],
    "cad": ["canadian dollars", "canadian dollar", "cad"],
    "inr": ["indian rupees", "indian rupee", "rupees", "rupee", "inr"],
    "km": ["kilometres", "kilometers", "kilometre", "kilometer", "kms", "km"],
    "mile": ["miles", "mile", "mi"],
    "meter": ["metres", "meters", "metre", "meter", "m"],
    "foot": ["feet", "foot", "ft"],
    "inch": ["inches", "inch", "in."],
    "cm": ["centimetres", "centimeters", "centimetre", "centimeter", "cm"],
    "kg": ["kilograms", "kilogram", "kilos", "kilo", "kgs", "kg"],
    "lb": ["pounds", "pound", "lbs", "lb"],
    "gram": ["grams", "gram", "g"],
    "ounce": ["ounces", "ounce", "oz"],
    "liter": ["litres", "liters", "litre", "liter", "l"],
    "ml": ["millilitres", "milliliters", "millilitre", "milliliter", "ml"],
    "gallon": ["gallons", "gallon", "gal"],
    "cup": ["cups", "cup"],
    "tablespoon": ["tablespoons", "tablespoon", "tbsp", "tbs"],
    "teaspoon": ["teaspoons", "teaspoon", "tsp"],
    "celsius": ["degrees celsius", "degree celsius", "°c", "celsius", "centigrade"],
    "fahrenheit": ["degrees fahrenheit", "degree fahrenheit", "°f", "fahrenheit"],
    "kelvin": ["kelvin"],
    "minute": ["minutes", "minute", "mins", "min"],
    "hour": ["hours", "hour", "hrs", "hr"],
    "second": ["seconds", "secs", "sec"],
    "day": ["days", "day"],
    "week": ["weeks", "week"],
    "month": ["months", "month"],
    "year": ["years", "year", "yrs", "yr"],
    "mph": ["miles per hour", "mph"],
    "kmh": ["kilometres per hour", "kilometers per hour", "km/h", "kph", "kmh"],
}
UNITS = frozenset(_UNITS)
# one-letter and ambiguous spellings count as a unit only right after a number ("5 m", "3 g", "2 in.")
_AFTER_NUMBER_ONLY = {
    "m",
    "g",
    "l",
    "ml",
    "mi",
    "in.",
    "min",
    "sec",
    "gal",
    "oz",
    "ft",
    "day",
    "days",
    "second",
}
_CURRENCY_SIGNS = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr"}

_UNITS_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}
NUMBER_WORDS: dict[str, int] = {**_UNITS_WORDS, **_TENS, **_SCALES}  # every number word, for slots.py
# "a cup", "an hour", "a dozen": "a" is the number one before a measure
_MEASURES = {
    spelling
    for spellings in _UNITS.values()
    for spelling in spellings
    if " " not in spelling and spelling not in _AFTER_NUMBER_ONLY
} | {"dozen", "couple", "pair"}


def _words_pattern(words: list[str], flags: int = 0) -> re.Pattern[str]:
    ordered = sorted(words, key=len, reverse=True)
    return re.compile(r"(?<![\w$€£¥₹])(" + "|".join(re.escape(w) for w in ordered) + r")(?![\w])", flags)


_CASED = _words_pattern(list(_ABBREVIATIONS_CASED))
_UNCASED = _words_pattern(list(_ABBREVIATIONS), re.IGNORECASE)
_UNCASED_MAP = {k.lower(): v for k, v in _ABBREVIATIONS.items()}
_SPELLING = {spelling: unit for unit, spellings in _UNITS.items() for spelling in spellings}
_UNIT = _words_pattern([s for s in _SPELLING if s not in _AFTER_NUMBER_ONLY], re.IGNORECASE)
_UNIT_AFTER_NUMBER = re.compile(
    r"(\d)\s*("
    + "|".join(re.escape(s) for s in sorted(_AFTER_NUMBER_ONLY, key=len, reverse=True))
    + r")(?![\w])",
    re.IGNORECASE,
)
_SIGN = re.compile(r"([$€£¥₹])\s?(\d[\d,]*(?:\.\d+)?)(\s?[kKmM]\b)?")
_NUMBER_WORD = re.compile(
    r"\b(?:("
    + "|".join(_TENS)
    + r")(?:[-\s]("
    + "|".join(list(_UNITS_WORDS)[1:10])
    + r"))?|("
    + "|".join(_UNITS_WORDS)
    + r"))\b(?:\s+("
    + "|".join(_SCALES)
    + r"))?",
    re.IGNORECASE,
)
_ARTICLE_MEASURE = re.compile(
    r"\b(?:a|an)\s+(?=(?:[A-Za-z-]+\s+)?(?:"
    + "|".join(re.escape(w) for w in sorted(_MEASURES, key=len, reverse=True))
    + r")\b)",
    re.IGNORECASE,
)
_HALF = re.compile(r"\bhalf\s+(?:a|an)\s+", re.IGNORECASE)
_HYPHEN_NUMBER = re.compile(r"(\d)-(?=[a-z])", re.IGNORECASE)  # "5-year-old" -> "5 year-old"
_AGE = re.compile(r"\b(year|month|week|day)s?[- ]old\b", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
# "72°F": the unit pattern wants no word character before a spelling, and a digit is one
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # "1,000" -> "1000"
_DEGREES = re.compile(r"(\d)\s*°\s*([CF])(?![\w])", re.IGNORECASE)


def _number_word(match: re.Match[str]) -> str:
    tens, unit, single, scale = match.groups()
    if tens is not None:
        value = _TENS[tens.lower()] + (_UNITS_WORDS[unit.lower()] if unit else 0)
    else:
        value = _UNITS_WORDS[single.lower()]
    if scale is not None:
        value *= _SCALES[scale.lower()]
    return str(value)


def _sign(match: re.Match[str]) -> str:
    sign, amount, suffix = match.groups()
    scale = {"k": "000", "m": "000000"}.get((suffix or "").strip().lower(), "")
    return f"{amount.replace(',', '')}{scale} {_CURRENCY_SIGNS[sign]}"


@lru_cache(maxsize=8192)
def canonical(text: str) -> str:
    """``text`` with one spelling for each abbreviation, currency, unit and number word (cached)."""
    out = _SIGN.sub(_sign, text)
    out = _THOUSANDS.sub("", out)
    out = _DEGREES.sub(lambda m: f"{m.group(1)} {'celsius' if m.group(2) in 'cC' else 'fahrenheit'}", out)
    out = _HALF.sub("0.5 ", out)
    out = _NUMBER_WORD.sub(_number_word, out)
    out = _ARTICLE_MEASURE.sub("1 ", out)
    out = _HYPHEN_NUMBER.sub(r"\1 ", out)
    out = _AGE.sub(lambda m: f"{m.group(1).lower()} old", out)
    out = _UNIT_AFTER_NUMBER.sub(lambda m: f"{m.group(1)} {_SPELLING[m.group(2).lower()]}", out)
    # units before abbreviations: "US dollars" is a currency, "US" alone the country
    out = _UNIT.sub(lambda m: _SPELLING[m.group(1).lower()], out)
    out = _CASED.sub(lambda m: _ABBREVIATIONS_CASED[m.group(1)], out)
    out = _UNCASED.sub(lambda m: _UNCASED_MAP[m.group(1).lower()], out)
    return _SPACES.sub(" ", out).strip()
