"""What counts as personal data or a secret, and a fast scanner that masks it in text.

Detection
---------
* e-mail addresses;
* payment card numbers: 13-19 digits, bare or in the usual 4-4-4-4 / 4-6-5
  groups (one space or dash), accepted only with a card-network issuer prefix and
  a valid Luhn checksum, so look-alikes (`4111 1111 1111 1112`), epoch
  timestamps and ids stay;
* US SSNs written `123-45-6789`, without the never-issued areas 000, 666 and
  900-999, group 00 or serial 0000 (bare nine-digit numbers are left alone);
* phone numbers: E.164 (`+14155552671`), `+`/`00` international with separators,
  US `(555) 123-4567` / `555-123-4567` / `1 555 123 4567`, national trunk-0
  (`020 7946 0958`); plain digit runs (timestamps, token counts) never match;
* secrets: OpenAI/Anthropic `sk-…`, AWS `AKIA…`/`ASIA…`, GitHub `ghp_…`
  (and `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`), Slack `xox[abposr]-…`,
  Google `AIza…`, JWTs, `Bearer <token>`, `Basic <base64 user:pass>`, and the
  value of `password=…` / `"api_key": "…"` / `Authorization: …` pairs in text.

How it stays fast
-----------------
A naive scanner runs one expression per detector over every string. Python's
regex engine pays at every position where an alternative is tried (~10 ns per
character for a character-class alternation), while a search for a literal runs
at close to `memchr` speed. So each string gets one pass per *literal*, plus a
few C-speed byte operations, and a regex only where something can match:

* every secret detector is an expression that *starts with a literal* (`sk-`,
  `A` for `AKIA`/`ASIA`/`AIza`, `gh`, `xox`, `eyJ`, `earer`, `asic`); the
  engine's literal search is its prefilter. Strings up to `SHORT` characters
  (most attribute values) first check the literals with `in`;
* `key: value` secrets need a `:` or `=`: strings without one skip them; in
  long strings the word before each separator is compared with the keyword
  spellings (`endswith`) instead of running six keyword searches;
* e-mail is only looked for around each `@` (`str.find`);
* the digit shapes (card, SSN, phones) are one combined expression run only
  on *clusters*: maximal runs of digits and ` .()+-` holding three digits in a
  row and at least MIN_DIGITS digits, found with `bytes.translate`/`find`/`count`;
* results are cached by value (model names, URLs, system prompts repeat).

Candidates of all detectors are then validated (Luhn, SSN rules, digit counts,
base64, placeholder values) and overlaps resolved leftmost-first, longest on
ties. Every shortcut is exact: a string gives the same result whichever path
it takes (the tests pad strings past SHORT to check that).
`loadtests/bench_redact.py` measures all this against the naive scanner.

JSON awareness
--------------
Word boundaries are ASCII and treat JSON escapes (`\\n`, `\\uXXXX`) as
boundaries: LLM content often arrives as JSON text (`gen_ai.input.messages`,
serialized with `ensure_ascii`), and a match never swallows the backslash of an
escape, so masked JSON stays valid.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------- categories and types
EMAIL = "email"
CREDIT_CARD = "credit_card"
SSN = "ssn"
PHONE = "phone"
API_KEY = "api_key"
CATEGORIES = (EMAIL, CREDIT_CARD, SSN, PHONE, API_KEY)
"""The `mask:` toggles. `api_key` covers provider keys, JWTs and credentials in text."""

JWT = "jwt"
SECRET = "secret"  # Bearer/Basic credentials and `password=…`-style pairs found in text
SECRET_KEY = "secret_key"  # an attribute dropped because its key names a secret
TRUNCATED = "truncated"  # a value cut to `max_value_length`
BUILTIN_TYPES = frozenset({EMAIL, CREDIT_CARD, SSN, PHONE, API_KEY, JWT, SECRET, SECRET_KEY, TRUNCATED})

SHORT = 256
"""Strings up to this length check each detector's trigger literals with `in` before its regex runs."""
MIN_BUILTIN_LEN = 6
"""No built-in detector matches fewer characters (`a@b.co`)."""
CACHE_MAX_VALUE = 1 << 16
CACHE_ENTRIES = 8192
CACHE_CHARS = 4 << 20
"""Results are cached by value (model names, system prompts repeat in every span); the cache is
cleared when it holds CACHE_ENTRIES values or CACHE_CHARS characters."""
_MISS = object()

_WORD = "A-Za-z0-9_"
_END = rf"(?![{_WORD}])"


# ---------------------------------------------------------------- boundaries
def _boundary(before: str, not_after: str) -> str:
    """Lookbehinds placed right after the fixed-width prefix `before`: it starts a token.

    A token starts when the preceding character is not in `not_after` (nor a lone
    backslash), or when the preceding text is a JSON escape (`\\n`, `\\u00e9`).
    Putting the check after the prefix keeps the prefix first in the expression,
    which is what lets the engine search for it quickly.
    """
    return rf"(?:(?<![{not_after}\\]{before})|(?<=\\[nrtbf]{before})|(?<=\\u[0-9A-Fa-f]{{4}}{before}))"


def word_start(text: str, pos: int) -> bool:
    """The same rule in Python (for keywords found on the lower-cased text), plus camelCase."""
    if pos == 0:
        return True
    prev = text[pos - 1]
    if not (prev.isascii() and (prev.isalnum() or prev == "\\")):
        return True
    if prev.islower() and text[pos].isupper():  # accessToken, clientSecret
        return True
    if pos >= 2 and text[pos - 2] == "\\" and prev in "nrtbf":
        return True
    return pos >= 6 and text[pos - 6 : pos - 4] == "\\u" and _is_hex(text[pos - 4 : pos])


def _is_hex(s: str) -> bool:
    return len(s) == 4 and all(ch in "0123456789abcdefABCDEF" for ch in s)


# ---------------------------------------------------------------- validators
def luhn_ok(digits: str) -> bool:
    """Luhn checksum over a string of ASCII digits."""
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if k & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def issuer_ok(digits: str) -> bool:
    """Issuer prefixes of the card networks; keeps epoch timestamps (`17…`) and ids out."""
    first = digits[0]
    if first in "456":  # Visa; Mastercard 51-55 and Maestro; Discover, UnionPay, Maestro
        return True
    if first == "3":  # Diners 30/36/38/39, JCB 35, Amex 34/37
        return digits[1] in "045789"
    if first == "2":  # Mastercard 2221-2720
        return 2221 <= int(digits[:4]) <= 2720
    return False


def _digits(text: str) -> str:
    return "".join(ch for ch in text if "0" <= ch <= "9")


def card_ok(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and issuer_ok(digits) and luhn_ok(digits)


def ssn_ok(text: str) -> bool:
    area, group, serial = text.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


_SIGNED_DECIMAL = re.compile(r"\+[0-9]+\.[0-9]+")  # +1.12345679
_SIGNED_DATE = re.compile(r"\+[0-9]{4}-[0-9]{2}-[0-9]{2}(?![0-9])")  # +1980-02-29 01:02


def _phone_plus_ok(text: str) -> bool:
    return (
        8 <= len(_digits(text)) <= 15
        and _SIGNED_DECIMAL.fullmatch(text) is None
        and _SIGNED_DATE.match(text) is None
    )


def _phone_00_ok(text: str) -> bool:
    # `00` international prefix: only with separators, so long plain numbers stay
    return 10 <= len(_digits(text)) <= 17 and any(ch in " .-()" for ch in text)


def _phone_us_ok(text: str) -> bool:
    # `1 555 123 4567`: a single leading digit before a separator must be the NANP country code
    return text[1].isdigit() or text[0] == "1"


def _phone_trunk_ok(text: str) -> bool:
    return 10 <= len(_digits(text)) <= 12


def _sk_ok(text: str) -> bool:
    # random key material has digits or capitals; a slug like `sk-some-long-name` has neither
    return any(ch.isdigit() or ch.isupper() for ch in text[3:])


def _bearer_ok(value: str) -> bool:
    # a real token has digits, punctuation or inner capitals; `Bearer responsibility` is prose
    if any(ch.isdigit() or ch in "._~+/-=" for ch in value):
        return True
    return any(ch.isupper() for ch in value[1:]) and any(ch.islower() for ch in value)


def _basic_ok(value: str) -> bool:
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in raw


_NOT_SECRETS = frozenset(
    [
        "none",
        "null",
        "nil",
        "true",
        "false",
        "undefined",
        "redacted",
        "masked",
        "hidden",
        "removed",
        "omitted",
        "bearer",
        "basic",
        "token",
        "str",
        "string",
        "bytes",
        "int",
        "float",
        "bool",
        "dict",
        "list",
        "object",
        "optional",
        "any",
    ]
)


_DOC_FIELD = re.compile(
    r":(?:param|type|arg|argument|key|keyword|ivar|cvar|var)[ \t]+(?:\S+[ \t]+)?[\w.-]*\Z"
)
_CODE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _kv_value_ok(value: str, key: str, after: str) -> bool:
    """Whether the value of a `key: value` pair found in text can be a credential.

    Not: a count (`token: 128`), a placeholder (`${DB_PASSWORD}`, `<token>`,
    `{{secret}}`, `None`, `****`, a bare scheme word), a type (`password: str`), a
    comparison (`secret == other`), or, unquoted, code: a call or subscript
    (`token = attach(…)`), an attribute path (`secret=self.secret`), the key's own
    name (`password=password`). `after` is the character after an unquoted value.
    """
    if value.isdigit() and "token" in key.lower():
        return False
    if value.lower() in _NOT_SECRETS or value.startswith(("$", "<", "{{", "%(")):
        return False
    if not value.strip(".*xX-_•") or value[0] == "=":  # `...`, `****`, `xxxx`; `secret == x`
        return False
    if value.lower() == key.lower().rstrip(" \t:=\"'\\"):  # `password=password`, `'token': 'token'`
        return False
    # unquoted: code rather than a credential? `token = attach(…)`, `secret=self.secret`
    return not after or (after not in "([" and _CODE_PATH.fullmatch(value) is None)


# ---------------------------------------------------------------- detectors
@dataclass(frozen=True)
class Detector:
    """One detector: a regex, the type it reports, the `mask:` toggle that enables it."""

    name: str
    kind: str
    category: str
    source: str
    trigger: tuple[str, ...] = ()  # literals; none present (in `text`, or `low` if `lower`) ⇒ no match
    check: Callable[[str], bool] | None = None  # on the masked text
    value_group: str | None = None  # mask only this group ("password=" stays)
    lower: bool = False  # run on the lower-cased text; the keyword must start a word (see word_start)


# `"key": "…"`, `key=…`, `\"key\": \"…\"`; a quoted value runs to its quote, a bare one to a
# delimiter; an auth scheme word ("Bearer abc") belongs to the value.
_KV_TAIL = (
    r"""(?:\\?["'])?[ \t]*[:=][ \t]*"""
    r"""(?:\\?"(?P<dq>[^"\\\r\n]{1,512})|'(?P<sq>[^'\\\r\n]{1,512})"""
    r"""|(?P<bare>(?:(?:bearer|basic|token)[ \t]+)?[^\s"'`|\\,;&<>(){}\[\]]{1,512}))"""
)
_KV_KEYS = {  # lower-case; each starts with its literal, which is also its trigger
    "kv_pass": ("pass", r"pass(?:word|wd|phrase)"),
    "kv_secret": ("secret", r"secret(?:[_-]?key)?"),
    "kv_api": ("api", r"api[_-]?(?:key|secret|token)"),
    "kv_token": ("token", r"token"),
    "kv_auth": ("auth", r"auth(?:orization|[_-]?token)"),
    "kv_private": ("private", r"private[_-]?key"),
}

_SEPS = ("", "_", "-")
KV_SPELLINGS: dict[str, tuple[str, ...]] = {  # every key each of _KV_KEYS matches, for the separator path
    "kv_pass": ("password", "passwd", "passphrase"),
    "kv_secret": ("secret", *(f"secret{s}key" for s in _SEPS)),
    "kv_api": tuple(f"api{s}{w}" for s in _SEPS for w in ("key", "secret", "token")),
    "kv_token": ("token",),
    "kv_auth": ("authorization", *(f"auth{s}token" for s in _SEPS)),
    "kv_private": tuple(f"private{s}key" for s in _SEPS),
}


def _lit(prefix: str, rest: str, not_after: str = _WORD) -> str:
    return f"{re.escape(prefix)}{_boundary(re.escape(prefix), not_after)}{rest}"


SECRET_DETECTORS: tuple[Detector, ...] = (
    Detector("sk", API_KEY, API_KEY, _lit("sk-", r"[A-Za-z0-9_-]{20,}"), ("sk-",), _sk_ok),
    Detector(  # AWS access key ids and Google API keys share one search for "A"
        "aws_google",
        API_KEY,
        API_KEY,
        _lit("A", rf"(?:(?:KIA|SIA)[A-Z0-9]{{16}}{_END}|Iza[A-Za-z0-9_-]{{35}}(?![A-Za-z0-9_-]))"),
        ("AKIA", "ASIA", "AIza"),
    ),
    Detector(
        "github",
        API_KEY,
        API_KEY,
        _lit("gh", r"(?:[pousr]_[A-Za-z0-9]{36,255}|ithub_pat_[A-Za-z0-9_]{22,255})"),
        ("gh",),
    ),
    Detector("slack", API_KEY, API_KEY, _lit("xox", r"[abposr]-[A-Za-z0-9-]{10,250}"), ("xox",)),
    Detector(
        "jwt", JWT, API_KEY, _lit("eyJ", r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), ("eyJ",)
    ),
    Detector(
        "bearer",
        SECRET,
        API_KEY,
        rf"earer(?<=[Bb]earer){_boundary('[Bb]earer', _WORD)}[ \t]+(?P<v>[A-Za-z0-9._~+/-]{{12,}}=*)",
        ("earer",),
        _bearer_ok,
        value_group="v",
    ),
    Detector(
        "basic",
        SECRET,
        API_KEY,
        rf"asic(?<=[Bb]asic){_boundary('[Bb]asic', _WORD)}[ \t]+(?P<v>[A-Za-z0-9+/]{{8,}}={{0,2}})"
        r"(?![A-Za-z0-9+/=])",
        ("asic",),
        _basic_ok,
        value_group="v",
    ),
    *(
        Detector(name, SECRET, API_KEY, key + _KV_TAIL, (trig,), value_group="kv", lower=True)
        for name, (trig, key) in _KV_KEYS.items()
    ),
)

EMAIL_DETECTOR = Detector(
    "email",
    EMAIL,
    EMAIL,
    rf"[A-Za-z0-9_]{_boundary('.', _WORD)}[A-Za-z0-9._%+-]{{0,63}}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}",
    ("@",),
)

# Digit shapes, as (detector, first character class); the source starts after that character.
# Every character they can match is a digit or one of ` .()+-`, and the scanner only looks at
# clusters of those with three digits (or `+` and two digits) in a row, see _clusters: a phone
# number written with single digits only (`+1 2 3 4 5 6 7 8`) is not looked for.
_B = _boundary(".", _WORD)
DIGIT_DETECTORS: tuple[tuple[Detector, str], ...] = (
    (
        Detector(
            "card",
            CREDIT_CARD,
            CREDIT_CARD,
            rf"{_B}(?<![0-9][.,].)(?:[0-9]{{12,18}}"
            r"|[0-9]{3}(?P<card_sep>[ -])[0-9]{4}(?P=card_sep)[0-9]{4}(?P=card_sep)[0-9]{4}"
            r"(?:(?P=card_sep)[0-9]{3})?"
            rf"|[0-9]{{3}}[ -][0-9]{{6}}[ -][0-9]{{4,5}}){_END}(?![.,][0-9])",
            check=card_ok,
        ),
        "[0-9]",
    ),
    (
        Detector(
            "ssn",
            SSN,
            SSN,
            rf"{_B}[0-9]{{2}}-[0-9]{{2}}-[0-9]{{4}}(?![{_WORD}]|-[0-9])",
            check=ssn_ok,
        ),
        "[0-9]",
    ),
    (
        Detector(
            "phone_plus",
            PHONE,
            PHONE,
            rf"{_boundary('.', _WORD + '+')}[1-9](?:[ .()-]{{0,2}}[0-9]){{7,14}}{_END}",
            check=_phone_plus_ok,
        ),
        "[+]",
    ),
    (
        Detector(
            "phone_00",
            PHONE,
            PHONE,
            rf"{_B}0[1-9](?:[ .()-]{{0,2}}[0-9]){{7,14}}(?![0-9])",
            check=_phone_00_ok,
        ),
        "0",
    ),
    (
        Detector(
            "phone_paren",
            PHONE,
            PHONE,
            rf"{_B}[0-9]{{3}}\)[ .-]?[0-9]{{3}}[ .-][0-9]{{4}}(?![{_WORD}]|[.-][0-9])",
        ),
        "[(]",
    ),
    (
        Detector(
            "phone_us",
            PHONE,
            PHONE,
            rf"{_B}(?:[ .-]?(?:\([0-9]{{3}}\)[ .-]?|[0-9]{{3}}[ .-])[0-9]{{3}}[ .-][0-9]{{4}}"
            rf"|[0-9]{{2}}[ .-][0-9]{{3}}[ .-][0-9]{{4}})(?![{_WORD}]|[.-][0-9])",
            check=_phone_us_ok,
        ),
        "[0-9]",
    ),
    (
        Detector(
            "phone_trunk",
            PHONE,
            PHONE,
            rf"{_B}[1-9][0-9]{{0,3}}[ -][0-9]{{3,4}}[ -][0-9]{{3,4}}(?![{_WORD}]|[ .-][0-9])",
            check=_phone_trunk_ok,
        ),
        "0",
    ),
)

# bytes.translate table for digit clusters: digit or '+' → '0', separator → '.', other → 'x'
_CLUSTER_MAP = bytes(
    ord("0") if chr(b) in "0123456789+" else ord(".") if chr(b) in " .()-" else ord("x") for b in range(256)
)


MIN_DIGITS = 8
"""Every digit shape has at least this many digits (an E.164 number; cards, SSNs, US numbers more)."""


def _clusters(text: str) -> list[tuple[int, int]]:
    """Slices of `text` that can hold a digit-shape match, each with the character that ends it.

    A cluster is a maximal run of digits and ` .()+-` with three digits (a
    leading `+` counts as one) in a row and at least MIN_DIGITS digits in all.
    Encoding with `replace` keeps one byte per character, so positions stay
    those of `text`; all of this runs at C speed (translate, find, count).
    """
    raw = text.encode("ascii") if text.isascii() else text.encode("ascii", "replace")
    tb = raw.translate(_CLUSTER_MAP)
    out: list[tuple[int, int]] = []
    i = tb.find(b"000")
    while i >= 0:
        start = tb.rfind(b"x", 0, i) + 1
        end = tb.find(b"x", i)
        stop = len(tb) if end < 0 else end + 1  # the delimiter too, so lookaheads see it
        if tb.count(b"0", start, stop) >= MIN_DIGITS:
            out.append((start, stop))
        if end < 0:
            break
        i = tb.find(b"000", end)
    return out


def standalone_source(det: Detector) -> str:
    """The detector as one self-contained expression (digit shapes get their first class back)."""
    for d, first in DIGIT_DETECTORS:
        if d is det:
            return first + det.source
    return det.source


def all_detectors() -> tuple[Detector, ...]:
    return (*SECRET_DETECTORS, EMAIL_DETECTOR, *(d for d, _ in DIGIT_DETECTORS))


def replacement_prefix(template: str) -> str:
    """The literal text every rendered replacement starts with (masked values are left alone)."""
    return template.split("{", 1)[0]


@dataclass(frozen=True)
class CustomPattern:
    name: str
    regex: re.Pattern[str]


@dataclass
class _Compiled:
    det: Detector
    rx: re.Pattern[str]
    rx_ci: re.Pattern[str] | None = None  # kv on text whose lower-casing does not keep positions


Span = tuple[int, int, int, int, str]
"""A validated match: (start, end, mask_start, mask_end, type)."""


class Scanner:
    """Masks the enabled detectors, then custom patterns, in strings.

    `scan(text)` returns None when nothing was masked, else the new text and the
    types masked, one entry per replacement.
    """

    def __init__(
        self,
        categories: Iterable[str] = CATEGORIES,
        replacement: str = "[REDACTED:{type}]",
        custom: Sequence[CustomPattern] = (),
    ) -> None:
        enabled = set(categories)
        unknown = enabled - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories: {sorted(unknown)}")
        self.categories = tuple(c for c in CATEGORIES if c in enabled)
        self.replacement = replacement
        self.custom = tuple(custom)
        self._rendered: dict[str, str] = {}
        self._skip_prefix = replacement_prefix(replacement)
        self._secrets = [
            _Compiled(d, re.compile(d.source), re.compile(d.source, re.IGNORECASE) if d.lower else None)
            for d in SECRET_DETECTORS
            if d.category in enabled
        ]
        self._email = re.compile(EMAIL_DETECTOR.source) if EMAIL in enabled else None
        digits = [(d, first) for d, first in DIGIT_DETECTORS if d.category in enabled]
        self._digit_by_group = {f"d_{d.name}": d for d, _ in digits}
        self._digits = (
            re.compile(
                "[0-9+(](?:"
                + "|".join(f"(?<={first}){d.source}(?P<d_{d.name}>)" for d, first in digits)
                + ")"
            )
            if digits
            else None
        )
        self.enabled = bool(self._secrets or self._email or self._digits)
        self._kv = {c.det.name: c for c in self._secrets if c.det.lower}
        self._kv_words = sorted(
            ((w, c) for name, c in self._kv.items() for w in KV_SPELLINGS[name]), key=lambda x: -len(x[0])
        )
        self._kv_suffixes = tuple(w for w, _ in self._kv_words)
        self._plan_text = [(t, c) for c in self._secrets if not c.det.lower for t in c.det.trigger]
        self._plan_low = [(t, c) for c in self._secrets if c.det.lower for t in c.det.trigger]
        self._cache: dict[str, tuple[str, tuple[str, ...]] | None] = {}
        self._cache_chars = 0

    def render(self, kind: str) -> str:
        out = self._rendered.get(kind)
        if out is None:
            out = self._rendered[kind] = self.replacement.format(type=kind)
        return out

    # ------------------------------------------------------------ scanning
    def scan(self, text: str) -> tuple[str, list[str]] | None:
        n = len(text)
        cacheable = n <= CACHE_MAX_VALUE
        if cacheable:
            hit = self._cache.get(text, _MISS)
            if hit is not _MISS:
                return None if hit is None else (hit[0], list(hit[1]))  # type: ignore[index]
        found: list[str] = []
        out = text
        if self.enabled and n >= MIN_BUILTIN_LEN:
            spans = self.candidates(text)
            if spans:
                out = self._apply(text, spans, found)
        for pat in self.custom:
            out = self._apply_custom(pat, out, found)
        res = (out, found) if found else None
        if cacheable:
            if len(self._cache) >= CACHE_ENTRIES or self._cache_chars + n > CACHE_CHARS:
                self._cache.clear()
                self._cache_chars = 0
            self._cache[text] = None if res is None else (out, tuple(found))
            self._cache_chars += n
        return res

    def candidates(self, text: str) -> list[Span]:
        """Validated matches of all enabled detectors, overlaps not yet resolved."""
        out: list[Span] = []
        low: str | None = None
        # key=value secrets need a separator; `in` on one character is a memchr
        kv = ":" in text or "=" in text
        if len(text) <= SHORT:  # cheap `in` triggers first: most short values hold none
            todo = {id(c): c for trig, c in self._plan_text if trig in text}
            if kv:
                low = text.lower()
                todo.update((id(c), c) for trig, c in self._plan_low if trig in low)
            for c in todo.values():
                self._secret_matches(c, text, low, out)
        else:  # long strings: the literal search that starts each regex is the trigger
            for c in self._secrets:
                if not c.det.lower:
                    self._secret_matches(c, text, None, out)
            if kv and self._kv:
                low = text.lower()
                self._kv_by_separator(text, low, out)
        if self._email is not None and "@" in text:
            self._emails(text, out)
        if self._digits is not None:
            rx = self._digits
            by_group = self._digit_by_group
            for lo, hi in _clusters(text):
                pos = lo
                while (m := rx.search(text, pos, hi)) is not None:
                    det = by_group[m.lastgroup or ""]
                    start, end = m.span()
                    if det.check is None or det.check(m.group()):
                        out.append((start, end, start, end, det.kind))
                        pos = end
                        continue
                    # a failed 4-4-4-4-3 may be a 4-4-4-4 card followed by other digits ("… 1111 123-45-…")
                    if (
                        det.kind == CREDIT_CARD
                        and m.group("card_sep")
                        and end - start == 23
                        and card_ok(text[start : start + 19])
                    ):
                        out.append((start, start + 19, start, start + 19, CREDIT_CARD))
                        pos = start + 19
                        continue
                    pos = start + 1  # a rejected look-alike must not hide a match that starts inside it
        return out

    def _secret_matches(self, c: _Compiled, text: str, low: str | None, out: list[Span]) -> None:
        det = c.det
        rx, src = c.rx, text
        if det.lower:
            if low is not None and len(low) == len(text):
                src = low
            else:  # lower-casing changed lengths (rare non-ASCII): case-insensitive on the text itself
                assert c.rx_ci is not None
                rx = c.rx_ci
        pos = 0
        while (m := rx.search(src, pos)) is not None:
            if (not det.lower or word_start(text, m.start())) and self._take(det, m, text, out):
                pos = m.end()
            else:
                pos = m.start() + 1  # a rejected match must not hide one that starts inside it

    def _kv_by_separator(self, text: str, low: str, out: list[Span]) -> None:
        """`key: value` secrets in long text, found from each `:`/`=` instead of six keyword scans.

        Looks at the word right before each separator (after an optional quote and
        blanks): if it is one of KV_SPELLINGS that starts a word, the keyword's own
        expression is matched from there, so the result is the one the keyword scans
        would give. Text dense with separators (code, JSON tables) takes the scans.
        """
        n_sep = low.count(":") + low.count("=")
        if n_sep > 8 + len(low) // 128 or len(low) != len(text):
            for c in self._kv.values():
                self._secret_matches(c, text, low, out)
            return
        words = self._kv_words
        suffixes = self._kv_suffixes
        for sep in (":", "="):
            i = low.find(sep)
            while i >= 0:
                j = i
                while j > 0 and low[j - 1] in " \t":
                    j -= 1
                if j > 0 and low[j - 1] in "\"'":
                    j -= 1
                    if j > 0 and low[j - 1] == "\\":
                        j -= 1
                if low.endswith(suffixes, max(0, j - 16), j):
                    for word, c in words:
                        k = j - len(word)
                        if k >= 0 and low.startswith(word, k) and word_start(text, k):
                            m = c.rx.match(low, k)
                            if m is not None:
                                self._take(c.det, m, text, out)
                            break
                i = low.find(sep, i + 1)

    def _take(self, det: Detector, m: re.Match[str], text: str, out: list[Span]) -> bool:
        """Validate one secret match and add what to mask; False when it is rejected."""
        start = m.start()
        if det.value_group is None:
            if det.check is not None and not det.check(m.group()):
                return False
            out.append((start, m.end(), start, m.end(), det.kind))
            return True
        if det.value_group == "kv":
            g = "dq" if m.start("dq") >= 0 else ("sq" if m.start("sq") >= 0 else "bare")
        else:
            g = det.value_group
        vs, ve = m.start(g), m.end(g)
        value = text[vs:ve]
        skip = self._skip_prefix
        if skip and value.startswith(skip):
            return False  # already masked
        if det.value_group == "kv":
            if _DOC_FIELD.search(text, max(0, start - 40), start):  # `:param password: The …`
                return False
            after = (text[ve : ve + 1] or " ") if g == "bare" else ""
            if not _kv_value_ok(value, text[start:vs], after):
                return False
        elif det.check is not None and not det.check(value):
            return False
        out.append((start, m.end(), vs, ve, det.kind))
        return True

    def _emails(self, text: str, out: list[Span]) -> None:
        """Look for addresses only around each '@' (a local part is at most 64 characters)."""
        rx = self._email
        assert rx is not None
        pos = 0
        while True:
            at = text.find("@", pos)
            if at < 0:
                return
            m = rx.search(text, max(pos, at - 70), at + 260)
            if m is None:
                pos = at + 1
                continue
            out.append((m.start(), m.end(), m.start(), m.end(), EMAIL))
            pos = m.end()

    def _apply(self, text: str, spans: list[Span], found: list[str]) -> str:
        spans.sort(key=lambda s: (s[0], -s[1]))
        parts: list[str] = []
        pos = last_end = 0
        for start, end, ms, me, kind in spans:
            if start < last_end:
                continue  # overlaps an earlier (or, at the same start, a longer) match
            parts.append(text[pos:ms])
            parts.append(self.render(kind))
            found.append(kind)
            pos, last_end = me, end
        parts.append(text[pos:])
        return "".join(parts)

    def _apply_custom(self, pat: CustomPattern, text: str, found: list[str]) -> str:
        rep = self.render(pat.name)
        skip = self._skip_prefix
        hits = 0

        def sub(m: re.Match[str]) -> str:
            nonlocal hits
            if not m.group() or (skip and m.group().startswith(skip)):
                return m.group()
            hits += 1
            return rep

        out = pat.regex.sub(sub, text)
        if not hits:
            return text
        found.extend([pat.name] * hits)
        return out
