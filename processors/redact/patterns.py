"""What counts as personal data or a secret, and one fast scanner that masks it in text.

All built-in detectors are alternatives of one compiled regular expression, so a
string is scanned once. Cheap prefilters pick which alternatives that one pass
needs: the e-mail alternative only when the string holds an ``@``, the
digit-shaped ones (card, SSN, phone) only when it holds a run of three digits or
a ``+``. The secret alternatives (provider keys, JWT, ``Bearer``/``Basic``
credentials, ``password=…`` pairs) always take part; every one of them begins
with a fixed character class, which the regex engine rejects in one step at
positions where it cannot start. One compiled variant per prefilter outcome is
built on first use.

Matches that only look like personal data are checked before masking: card
numbers by issuer prefix and the Luhn checksum, SSNs by the invalid-area rules,
phone numbers by their digit count, ``Basic`` credentials by decoding them.

Word boundaries are ASCII and aware of JSON string escapes (``\\n``, ``\\uXXXX``),
because much LLM content reaches the gateway as JSON text
(``gen_ai.input.messages``): an address right after an escaped newline or an
escaped non-ASCII character is found, and a replacement never swallows the
backslash of an escape, so JSON stays valid after masking.
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
"""The `mask:` toggles. `api_key` also covers JWTs and credentials in text."""

JWT = "jwt"
SECRET = "secret"  # Bearer/Basic credentials and `password=…`-style pairs found in text
SECRET_KEY = "secret_key"  # an attribute dropped because its key names a secret
TRUNCATED = "truncated"  # a value cut to `max_value_length`
BUILTIN_TYPES = frozenset({EMAIL, CREDIT_CARD, SSN, PHONE, API_KEY, JWT, SECRET, SECRET_KEY, TRUNCATED})

# Prefilter families.
_AT, _DIGIT, _KEY = 1, 2, 4


# ---------------------------------------------------------------- boundaries
def _start(first: str, not_after: str) -> str:
    """`first` (one character class) at a token start: not preceded by a `not_after` character.

    The lookbehind sits after the first character on purpose: an alternative
    that begins with a plain character class is rejected by the regex engine in
    a single step wherever that class does not match. A JSON escape (`\\n`,
    `\\uXXXX`) counts as a boundary, a lone backslash does not.
    """
    return rf"{first}(?:(?<![{not_after}\\].)|(?<=\\[nrtbf].)|(?<=\\u[0-9A-Fa-f]{{4}}.))"


_WORD = "A-Za-z0-9_"
_END = rf"(?![{_WORD}])"


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


def _issuer_ok(digits: str) -> bool:
    """Issuer prefixes of the major card networks; keeps timestamps (`17…`) and ids out."""
    first = digits[0]
    if first in "456":  # Visa, Mastercard 51-55 / Maestro, Discover / UnionPay / Maestro
        return True
    if first == "3":  # Amex 34/37, JCB 35, Diners 30/36/38/39
        return digits[1] in "045789"
    if first == "2":  # Mastercard 2221-2720
        return 2221 <= int(digits[:4]) <= 2720
    return False


def _only_digits(text: str) -> str:
    return "".join(ch for ch in text if "0" <= ch <= "9")


def _card_ok(text: str) -> bool:
    digits = _only_digits(text)
    return 13 <= len(digits) <= 19 and _issuer_ok(digits) and luhn_ok(digits)


def _ssn_ok(text: str) -> bool:
    area, group, serial = text.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _phone_plus_ok(text: str) -> bool:
    n = len(_only_digits(text))
    if text.startswith("00"):  # `00` international prefix: only with separators, plain numbers stay
        return 10 <= n <= 17 and any(ch in " .-()" for ch in text)
    return 8 <= n <= 15


def _phone_us_ok(text: str) -> bool:
    # `1 555 123 4567`: a leading single digit before a separator must be the NANP country code
    return text[1].isdigit() or text[0] == "1"


def _phone_trunk_ok(text: str) -> bool:
    return 10 <= len(_only_digits(text)) <= 12


def _sk_ok(text: str) -> bool:
    # random key material has digits or capitals; a slug like `sk-some-long-name` does not
    body = text[3:]
    return any(ch.isdigit() or ch.isupper() for ch in body)


def _bearer_ok(value: str) -> bool:
    # a real token has digits, inner capitals or punctuation; `Bearer responsibility` is prose
    if any(ch.isdigit() or ch in "._~+/-=" for ch in value):
        return True
    return any(ch.isupper() for ch in value[1:]) and any(ch.islower() for ch in value)


def _basic_ok(value: str) -> bool:
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in raw



def _kv_ok(key: str, value: str) -> bool:
    # `token: 123` / `max-token=512` are counts, not credentials
    return not (value.isdigit() and "token" in key.lower())


# ---------------------------------------------------------------- detectors
@dataclass(frozen=True)
class Detector:
    """One alternative of the combined expression."""

    name: str  # regex-safe id, unique
    kind: str  # the type reported and put in the replacement
    category: str  # the `mask:` toggle that enables it
    family: int  # prefilter family
    source: str  # regex; must not use numbered groups
    check: Callable[[str], bool] | None = None  # on the matched text (or on `value`, see below)
    value_group: str | None = None  # mask only this group; text before it is kept ("password=")


_KV_KEYS = (
    # every alternative starts with a plain character class (fast rejection), then ignores case
    rf"{_start('[Pp]', 'A-Za-z0-9')}(?i:ass(?:word|wd|phrase)|rivate[_-]?key)",
    rf"{_start('[Ss]', 'A-Za-z0-9')}(?i:ecret(?:[_-]?key)?|ession[_-]?token)",
    rf"{_start('[Aa]', 'A-Za-z0-9')}(?i:pi[_-]?(?:key|secret|token)|ccess[_-]?token|uth[_-]?token"
    r"|uthorization)",
    rf"{_start('[Cc]', 'A-Za-z0-9')}(?i:lient[_-]?secret)",
    rf"{_start('[Rr]', 'A-Za-z0-9')}(?i:efresh[_-]?token)",
    rf"{_start('[Tt]', 'A-Za-z0-9')}(?i:oken)",
)
# `key` `"key"` `\"key\"` then `:`/`=`, then a quoted value up to its quote, or a bare one up to a
# delimiter; an auth scheme word ("Bearer abc") belongs to the value.
_KV_SEP = r"""(?:\\?["'])?[ \t]*[:=][ \t]*"""
_KV_VALUE = (
    r"""(?:\\?"(?P<kv_dq>[^"\\\r\n]{1,512})|'(?P<kv_sq>[^'\\\r\n]{1,512})"""
    r"""|(?P<kv_bare>(?:(?:[Bb]earer|[Bb]asic|[Tt]oken)[ \t]+)?[^\s"'\\,;&<>(){}\[\]]{1,512}))"""
)

DETECTORS: tuple[Detector, ...] = (
    # ---- secrets (always scanned; each starts with a fixed class)
    Detector("sk", API_KEY, API_KEY, _KEY, rf"{_start('s', _WORD)}k-[A-Za-z0-9_-]{{20,}}", _sk_ok),
    Detector(
        "aws", API_KEY, API_KEY, _KEY, rf"{_start('A', _WORD)}(?:KIA|SIA|BIA|CCA)[A-Z0-9]{{16}}{_END}"
    ),
    Detector("gapi", API_KEY, API_KEY, _KEY, rf"{_start('A', _WORD)}Iza[A-Za-z0-9_-]{{35}}(?![A-Za-z0-9_-])"),
    Detector(
        "gh",
        API_KEY,
        API_KEY,
        _KEY,
        rf"{_start('g', _WORD)}(?:h[pousr]_[A-Za-z0-9]{{36,255}}|ithub_pat_[A-Za-z0-9_]{{22,255}})",
    ),
    Detector("slack", API_KEY, API_KEY, _KEY, rf"{_start('x', _WORD)}ox[abposr]-[A-Za-z0-9-]{{10,250}}"),
    Detector(
        "jwt",
        JWT,
        API_KEY,
        _KEY,
        rf"{_start('e', _WORD)}yJ[A-Za-z0-9_-]{{8,}}\.[A-Za-z0-9_-]{{8,}}\.[A-Za-z0-9_-]*",
    ),
    Detector(
        "kv",
        SECRET,
        API_KEY,
        _KEY,
        "(?:" + "|".join(_KV_KEYS) + ")" + _KV_SEP + _KV_VALUE,
        value_group="kv",
    ),
    Detector(
        "bearer",
        SECRET,
        API_KEY,
        _KEY,
        rf"{_start('[Bb]', _WORD)}earer[ \t]+(?P<bearer_v>[A-Za-z0-9._~+/-]{{12,}}=*)",
        _bearer_ok,
        value_group="bearer_v",
    ),
    Detector(
        "basic",
        SECRET,
        API_KEY,
        _KEY,
        rf"{_start('[Bb]', _WORD)}asic[ \t]+(?P<basic_v>[A-Za-z0-9+/]{{8,}}={{0,2}})",
        _basic_ok,
        value_group="basic_v",
    ),
    # ---- e-mail (only when the string has an '@')
    Detector(
        "email",
        EMAIL,
        EMAIL,
        _AT,
        rf"{_start('[A-Za-z0-9_]', _WORD + '.%+-')}[A-Za-z0-9._%+-]{{0,63}}"
        r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}",
    ),
    # ---- digit shapes (only when the string has three digits in a row or a '+')
    Detector(
        "card",
        CREDIT_CARD,
        CREDIT_CARD,
        _DIGIT,
        rf"{_start('[0-9]', _WORD)}(?:[0-9]{{12,18}}"
        r"|[0-9]{3}(?P<card_sep>[ -])[0-9]{4}(?P=card_sep)[0-9]{4}(?P=card_sep)[0-9]{4}"
        r"(?:(?P=card_sep)[0-9]{3})?"
        rf"|[0-9]{{3}}[ -][0-9]{{6}}[ -][0-9]{{4,5}}){_END}",
        _card_ok,
    ),
    Detector(
        "ssn",
        SSN,
        SSN,
        _DIGIT,
        rf"{_start('[0-9]', _WORD)}[0-9]{{2}}-[0-9]{{2}}-[0-9]{{4}}(?![{_WORD}]|-[0-9])",
        _ssn_ok,
    ),
    Detector(
        "phone_plus",
        PHONE,
        PHONE,
        _DIGIT,
        rf"(?:{_start('[+]', _WORD + '+')}[1-9]|{_start('0', _WORD)}0[1-9])(?:[ .()-]{{0,2}}[0-9]){{7,14}}"
        r"(?![0-9])",
        _phone_plus_ok,
    ),
    Detector(
        "phone_paren",
        PHONE,
        PHONE,
        _DIGIT,
        rf"{_start('[(]', _WORD)}[0-9]{{3}}\)[ .-]?[0-9]{{3}}[ .-][0-9]{{4}}(?![{_WORD}]|[.-][0-9])",
    ),
    Detector(
        "phone_us",
        PHONE,
        PHONE,
        _DIGIT,
        rf"{_start('[0-9]', _WORD)}(?:[ .-]?(?:\([0-9]{{3}}\)[ .-]?|[0-9]{{3}}[ .-])[0-9]{{3}}[ .-][0-9]{{4}}"
        rf"|[0-9]{{2}}[ .-][0-9]{{3}}[ .-][0-9]{{4}})(?![{_WORD}]|[.-][0-9])",
        _phone_us_ok,
    ),
    Detector(
        "phone_trunk",
        PHONE,
        PHONE,
        _DIGIT,
        rf"{_start('0', _WORD)}[1-9][0-9]{{0,3}}[ -][0-9]{{3,4}}[ -][0-9]{{3,4}}(?![{_WORD}]|[ .-][0-9])",
        _phone_trunk_ok,
    ),
)

_DIGIT_RUN = re.compile(r"[0-9]{3}")
MIN_BUILTIN_LEN = 6  # shorter strings cannot hold any built-in match ("a@b.co")


def replacement_prefix(template: str) -> str:
    """The literal text a rendered replacement starts with (used to leave masked values alone)."""
    return template.split("{", 1)[0]


@dataclass(frozen=True)
class CustomPattern:
    name: str
    regex: re.Pattern[str]


class Scanner:
    """Masks the enabled detectors (and custom patterns) in strings.

    `scan(text)` returns None when nothing was masked, else the new text and the
    types masked (one entry per replacement).
    """

    def __init__(
        self,
        categories: Iterable[str],
        replacement: str = "[REDACTED:{type}]",
        custom: Sequence[CustomPattern] = (),
    ) -> None:
        enabled = set(categories)
        unknown = enabled - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories: {sorted(unknown)}")
        self.detectors = tuple(d for d in DETECTORS if d.category in enabled)
        self.families = 0
        for d in self.detectors:
            self.families |= d.family
        self._by_name = {d.name: d for d in self.detectors}
        self._rendered: dict[str, str] = {}
        self.replacement = replacement
        self._skip_prefix = replacement_prefix(replacement)
        self.custom = tuple(custom)
        self._variants: dict[int, re.Pattern[str] | None] = {}

    def render(self, kind: str) -> str:
        out = self._rendered.get(kind)
        if out is None:
            out = self._rendered[kind] = self.replacement.format(type=kind)
        return out

    def combined(self, families: int) -> re.Pattern[str] | None:
        """The one expression for strings whose prefilters gave `families`."""
        families &= self.families
        rx = self._variants.get(families, False)
        if rx is False:
            parts = [f"{d.source}(?P<d_{d.name}>)" for d in self.detectors if d.family & families]
            rx = re.compile("|".join(parts)) if parts else None
            self._variants[families] = rx
        return rx  # type: ignore[return-value]

    def families_of(self, text: str) -> int:
        fam = _KEY
        if "@" in text:
            fam |= _AT
        if "+" in text or _DIGIT_RUN.search(text) is not None:
            fam |= _DIGIT
        return fam

    def scan(self, text: str) -> tuple[str, list[str]] | None:
        found: list[str] = []
        if len(text) >= MIN_BUILTIN_LEN and self.detectors:
            rx = self.combined(self.families_of(text))
            if rx is not None:
                text = self._apply_builtin(rx, text, found)
        for pat in self.custom:
            text = self._apply_custom(pat, text, found)
        return (text, found) if found else None

    def _apply_builtin(self, rx: re.Pattern[str], text: str, found: list[str]) -> str:
        parts: list[str] = []
        pos = 0
        for m in rx.finditer(text):
            name = m.lastgroup
            det = self._by_name[name[2:]] if name else None
            if det is None:  # pragma: no cover - every alternative ends in its marker group
                continue
            start = m.start()
            if det.value_group is not None:
                if det.name == "kv":
                    vg = "kv_dq" if m.group("kv_dq") is not None else (
                        "kv_sq" if m.group("kv_sq") is not None else "kv_bare"
                    )
                else:
                    vg = det.value_group
                value = m.group(vg)
                if self._skip_prefix and value.startswith(self._skip_prefix):
                    continue
                if det.name == "kv":
                    if not _kv_ok(text[start : m.start(vg)], value):
                        continue
                elif det.check is not None and not det.check(value):
                    continue
                start = m.start(vg)
                end = m.end(vg)
            else:
                end = m.end()
                if det.check is not None and not det.check(m.group()):
                    continue
            parts.append(text[pos:start])
            parts.append(self.render(det.kind))
            found.append(det.kind)
            pos = end
        if not parts:
            return text
        parts.append(text[pos:])
        return "".join(parts)

    def _apply_custom(self, pat: CustomPattern, text: str, found: list[str]) -> str:
        rep = self.render(pat.name)
        n_before = len(found)

        def sub(m: re.Match[str]) -> str:
            if self._skip_prefix and m.group().startswith(self._skip_prefix):
                return m.group()
            found.append(pat.name)
            return rep

        out = pat.regex.sub(sub, text)
        return out if len(found) > n_before else text


def naive_patterns(categories: Iterable[str]) -> list[tuple[Detector, re.Pattern[str]]]:
    """Each enabled detector compiled on its own: the baseline the benchmark compares against."""
    enabled = set(categories)
    return [(d, re.compile(d.source)) for d in DETECTORS if d.category in enabled]
