"""Invented, pronounceable names for the synthetic world (syllables + endings), never common English words.

Drawn only from a ``random.Random`` passed in, so the same seed gives the same names in every process.
"""

from __future__ import annotations

import random
import re


_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th",
           "tr", "v", "z", "sh", "w", "qu")
_SIMPLE_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "w", "th")
_VOWELS = ("a", "a", "e", "e", "i", "o", "o", "u", "ei", "y")
_INNER_CODAS = ("", "", "", "", "n", "r", "l", "s", "m")  # closing a syllable that another one follows
_FINAL_CODAS = ("n", "r", "l", "s", "m", "th", "nd", "rn", "ld", "st", "rk", "x", "v")  # before a vowel suffix
_SUFFIXES: dict[str, tuple[str, ...]] = {  # distinctive endings keep collisions with English words rare
    "given_f": ("ela", "wen", "ys", "essa", "ara", "ethe", "iel", "ova", "ynn", "ille", "ira", "ena"),
    "given_m": ("ulf", "ek", "ald", "ric", "orn", "oth", "ast", "mar", "wyn", "an", "or", "em"),
    "surname": ("holt", "quist", "vig", "mark", "dahl", "borg", "sen", "rand", "vane", "lund", "ard", "ick"),
    "city": ("ath", "wick", "holm", "mere", "stad", "ford", "vale", "dun", "ost", "grad", "heim", "by", "thorpe"),
    "country": ("enia", "ovia", "aria", "ona", "avia", "eth", "ond", "istra", "mark"),
    "river": ("esse", "ell", "ava", "oth", "unn", "ire", "ane", "ow"),
    "mountain": ("dra", "gard", "horn", "berg", "kar", "mor", "ak", "vik", "tind"),
    "company": ("wick", "dale", "bury", "hall", "field", "worth", "combe", "stead"),
}

_MAX_TOKEN = 10
_BAD_SEQUENCES = re.compile(
    r"(.)\1\1|ii|uu|yy|aa|q(?!u)|[^aeiouy]{4}|[aeiouy]{3}|yi|iy|uy|yu|^y|y.*y|ei.*(?:ei|y)|y.*ei"
)


def _alt(options) -> str:
    return "(?:" + "|".join(re.escape(o) for o in sorted(set(options), key=len, reverse=True) if o) + ")"


def _token_regex() -> re.Pattern[str]:
    """The regex of every name token :meth:`_NameBank.draw` can spell (lower case, before the blocklist).

    Used to build and check :data:`_BLOCKLIST`: every dictionary word it matches must be blocked.
    """
    onset, simple, vowel = _alt(_ONSETS), _alt(_SIMPLE_ONSETS), _alt(_VOWELS)
    inner, final = _alt(_INNER_CODAS), _alt(_FINAL_CODAS)
    open_stem = f"{onset}?{vowel}(?:{onset}{vowel}|{inner}{simple}{vowel})?"  # 1-2 syllables, last one open
    closed_stem = f"{open_stem}{final}"
    parts = []
    for group in _SUFFIXES.values():
        for suffix in group:
            parts.append((open_stem if _opens_with_consonant(suffix) else closed_stem) + re.escape(suffix))
    return re.compile("|".join(f"(?:{p})" for p in dict.fromkeys(parts)))


def _opens_with_consonant(suffix: str) -> bool:
    return suffix[0] not in "aeiouy"


# English words (and well-known proper nouns) that the name grammar can spell: any token in here is rejected.
# Built with ``_blocklist_for(open("/usr/share/dict/words"))`` (Debian's wamerican); tests/test_synth.py checks that
# it still covers that list, so regenerate it whenever the grammar above changes.
_BLOCKLIST_TEXT = """
abelard afield alan alaric aldan altamira aludra amharic anaheim andaman angolan anorak araby arena ariel arisen
artisan asheville astor athena avast avow baby barbaric barnaby barnard baseman bastard bastille bavaria behemoth
belem below bernard bestow bonneville bowen brakeman brendan buford bungalow dakar daniel darnell derek derick
desdemona desire disavow disfavor dishonor disregard divan divisor dominick donald donor donovan doric dothan
dristan duran dylan elanor elena elinor emerald eminem emperor enamor endow eric erick estela ethan evan favor
finesse fireman foreman foremast foremost formosan furbelow furor galena gamow gareth generic gerald gerard golan
governor haldane haman handyman harem helena herald hereby hereford hindustan historic homeric homesick homestead
honduran honor honoraria horseman human humane humor hydra hysteric impostor inane indira inhuman inhumane investor
iran ivan kennewick koran kronor kurdistan lamar lateran lenard libreville limerick lineman lorena lovelorn lovesick
lullaby lutheran lyman lyric mahavira malaria mandela mandeville manor masefield maverick merak methane milan
minefield minivan minor moldavia moldova montanan moran moravia mubarak mundane muriel mustard namath nanak nathan
nathaniel nazareth nestor nisan nolan nonhuman norseman numeric olenek oman omar operand oran orem owen pakistan
palomar pamela parmesan parnell partisan pasternak pastor pederast polymath pomona pusan ramona randell regard
reginald remark reran resell resistor risen roderick roman ronald ruby rumor salem samar samara saran savor selena
serena seville shaman sivan solaria standard steinem sudra suleiman sulfuric sullivan sunnyvale supernova survivor
susan system tamara tandem teheran tenor tethys texan thereby timor toby trademark transistor tremor trevor trimaran
tristan truman tulane tumor turkestan turmeric ugandan uric uriel valor vanessa vendor verona veteran visor
volgograd waldemar wallaby wendell wesak window wistaria woman zeroth
"""
_BLOCKLIST = frozenset(_BLOCKLIST_TEXT.split())


def _blocklist_for(words) -> list[str]:
    """The words of a word list that the name grammar could spell (lower-cased, sorted): what to block."""
    pattern = _token_regex()
    found = {w.strip().lower() for w in words}
    return sorted(
        w for w in found
        if w.isalpha() and w.isascii() and 4 <= len(w) <= _MAX_TOKEN
        and not _BAD_SEQUENCES.search(w) and pattern.fullmatch(w)
    )


class _NameBank:
    """Draws fresh, pronounceable, globally unique name tokens."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()  # membership only, never iterated

    def _stem(self, n_syl: int, open_end: bool) -> str:
        """``n_syl`` syllables; the last is closed by a coda unless ``open_end`` (the suffix brings a consonant)."""
        rng = self.rng
        out = ""
        prev_coda = ""
        for i in range(n_syl):
            if i == 0:
                onset = "" if rng.random() < 0.12 else rng.choice(_ONSETS)
            else:
                onset = rng.choice(_SIMPLE_ONSETS if prev_coda else _ONSETS)
            if i < n_syl - 1:
                coda = rng.choice(_INNER_CODAS)
            else:
                coda = "" if open_end else rng.choice(_FINAL_CODAS)
            out += onset + rng.choice(_VOWELS) + coda
            prev_coda = coda
        return out

    def acceptable(self, token: str) -> bool:
        low = token.lower()
        return (
            4 <= len(low) <= _MAX_TOKEN
            and low not in self.used
            and low not in _BLOCKLIST
            and not _BAD_SEQUENCES.search(low)
        )

    def reserve(self, token: str) -> None:
        self.used.add(token.lower())

    def draw(self, kind: str) -> str:
        suffixes = _SUFFIXES[kind]
        for _ in range(10_000):
            suffix = self.rng.choice(suffixes)
            n_syl = 1 if self.rng.random() < (0.8 if len(suffix) >= 4 else 0.6) else 2
            stem = self._stem(n_syl, open_end=_opens_with_consonant(suffix))
            token = stem + suffix
            if self.acceptable(token):
                self.reserve(token)
                return token[0].upper() + token[1:]
        raise RuntimeError(f"could not draw a fresh {kind} name")  # pragma: no cover - needs ~10^5 names
