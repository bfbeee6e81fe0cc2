"""Textualisation of tabular data (RecSysLLM): item names and texts, user profiles, queries, summaries.

All phrasing comes from the registry's `format:` / `phrases:` sections; only English profile grammar
(the article, gender words, "N-year-old") lives here, because it is grammar rather than a choice.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

GENDER_WORDS: dict[str, str] = {"m": "male", "f": "female", "male": "male", "female": "female"}
"""Profile words for the usual encodings of a `gender` attribute (other values are shown verbatim)."""
PROFILE_KEYS: tuple[str, ...] = ("age", "gender", "occupation")
"""Attributes rendered as one noun phrase ("a 24-year-old male technician"); others as "key value"."""
PROFILE_NOUN = "user"
"""Noun of the profile phrase when the occupation is missing or not a noun (`VAGUE_OCCUPATIONS`)."""
VAGUE_OCCUPATIONS: tuple[str, ...] = ("none", "other")
_YOO_SOUND = ("use", "usu", "uni", "eu", "one")
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def item_name(title: object, year: object, raw_id: str, fmt: Mapping[str, str]) -> str:
    """'Toy Story (1995)'; the title alone without a year; `format.unnamed_item` without a title."""
    if _missing(title) or not str(title).strip():
        return fmt["unnamed_item"].format(raw_id=raw_id)
    if _missing(year):
        return str(title).strip()
    return fmt["title_year"].format(title=str(title).strip(), year=int(year))


def item_text(name: str, genres: Sequence[str], fmt: Mapping[str, str]) -> str:
    """'Toy Story (1995) — Animation, Children's, Comedy' (the name alone without genres)."""
    if not genres:
        return name
    return fmt["item_text"].format(name=name, genres=fmt["genre_sep"].join(genres))


def item_tables(items: pd.DataFrame, fmt: Mapping[str, str]
                ) -> tuple[list[str], list[str | None], list[tuple[str, ...]], list[str]]:
    """Per canonical item index (0..n-1): names, titles (None when missing), genre tuples, item texts.

    `items` is the canonical items table (idx, item_id, title, year, categories).
    """
    n = int(items["idx"].max()) + 1 if len(items) else 0
    names, titles, genres, texts = [""] * n, [None] * n, [()] * n, [""] * n
    for idx, raw_id, title, year, cats in zip(items["idx"], items["item_id"], items["title"], items["year"],
                                              items["categories"]):
        g = tuple(str(c) for c in (cats if cats is not None else ()) if str(c).strip())
        name = item_name(title, year, str(raw_id), fmt)
        i = int(idx)
        names[i], genres[i], texts[i] = name, g, item_text(name, g, fmt)
        titles[i] = None if _missing(title) or not str(title).strip() else str(title).strip()
    return names, titles, genres, texts


def _article(word: str) -> str:
    """'a' or 'an' before `word` (vowel sounds, including 8, 11, 18, 80-89 when spoken)."""
    w = word.lower()
    digits = re.match(r"\d+", w)
    if digits:
        d = digits.group()
        return "an" if d.startswith("8") or (len(d) % 3 == 2 and d[:2] in ("11", "18")) else "a"
    return "an" if w[:1] in "aeiou" and not w.startswith(_YOO_SOUND) else "a"


def user_profile(attributes: Mapping[str, object], raw_id: str, fmt: Mapping[str, str]) -> str:
    """'a 24-year-old male technician, zip code 85711'; generic 'key value' pairs for unknown keys.

    An occupation of 'none'/'other' reads "a 24-year-old male user"; no attributes: `format.unnamed_user`.
    """
    attrs = {str(k): v for k, v in attributes.items() if not _missing(v) and str(v).strip()}
    if not attrs:
        return fmt["unnamed_user"].format(raw_id=raw_id)
    words = []
    if "age" in attrs:
        words.append(f"{str(attrs['age']).strip()}-year-old")
    if "gender" in attrs:
        g = str(attrs["gender"]).strip()
        words.append(GENDER_WORDS.get(g.lower(), g))
    occupation = str(attrs.get("occupation", "")).strip()
    words.append(occupation if occupation and occupation.lower() not in VAGUE_OCCUPATIONS else PROFILE_NOUN)
    phrase = f"{_article(words[0])} {' '.join(words)}"
    others = [f"{k.replace('_', ' ')} {str(v).strip()}" for k, v in attrs.items() if k not in PROFILE_KEYS]
    return ", ".join([phrase, *others])


def user_tables(users: pd.DataFrame, fmt: Mapping[str, str]) -> dict[int, str]:
    """Canonical users table (idx, user_id, attributes JSON) → {user_idx: profile text}."""
    out = {}
    for idx, raw_id, attrs in zip(users["idx"], users["user_id"], users["attributes"]):
        parsed = json.loads(attrs) if isinstance(attrs, str) and attrs.strip() else {}
        out[int(idx)] = user_profile(parsed if isinstance(parsed, dict) else {}, str(raw_id), fmt)
    return out


def title_words(name: str) -> list[str]:
    """Words of an item name (letters/digits, apostrophes kept inside words), year excluded."""
    return [w for w in _WORD_RE.findall(re.sub(r"\(\d{4}\)", "", name))]


def make_query(title: object, genres: Sequence[str], rng: np.random.Generator,
               phrases: Mapping[str, Sequence[str]]) -> str | None:
    """A search-like text query for an item: one of its genres, or a contiguous run of its title words.

    The kind (genre/title), the genre or word span, and the phrase are drawn from `rng`; None when
    the item has neither genres nor title words.
    """
    words = [] if _missing(title) else title_words(str(title))
    kinds = [k for k, ok in (("genre", bool(genres)), ("title", bool(words))) if ok]
    if not kinds:
        return None
    kind = kinds[int(rng.integers(len(kinds)))]
    phrase = phrases[kind][int(rng.integers(len(phrases[kind])))]
    if kind == "genre":
        return phrase.format(genre=genres[int(rng.integers(len(genres)))])
    length = int(rng.integers(1, len(words) + 1))
    start = int(rng.integers(0, len(words) - length + 1))
    return phrase.format(words=" ".join(words[start:start + length]))


def top_genres(items: Iterable[int], genres: Sequence[Sequence[str]], k: int) -> list[str]:
    """The `k` most frequent genres over `items` (ties: earlier first appearance first)."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for pos, i in enumerate(items):
        for g in genres[int(i)]:
            counts[g] += 1
            first.setdefault(g, pos)
    return sorted(counts, key=lambda g: (-counts[g], first[g]))[:k]
