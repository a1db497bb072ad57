"""Whole words as sparse terms: the word analyzer shared by training, the indexer and the service, and the vocabulary
of words a model's sparse head outputs.

A text's words: Unicode NFKC normalisation, lower case, runs of letters and digits (any script), then the content
rule of the piece vocabulary (at least two characters, not a stopword). A word vocabulary holds the training
captions' words in at least ``min_df`` captions; term id 0 pads, the words are ids 1..W in alphabetical order.

With ``inflections`` merged, the forms of one word share a term (``dog``/``dogs``, ``run``/``running``/``runs``):
conservative English suffix rules give each form its candidate base forms (none for a form English uses as a word
of its own: ``shorts``, ``building``), a form joins the term of a base the captions also use (or share with another
form), and the term is shown as its most frequent form in the training captions, so a displayed term is always a
real word of them. A query form the captions never used finds the term of its base the same way.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.stopwords import STOPWORDS
from core.vocab import Vocabulary

PAD_TERM = "[PAD]"  # term id 0: pads a text's row of term ids; never a term of the head
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script; '_' is a word character to \w, not to us
_MIN_STEM = 3  # an inflection rule applies only where at least this much of the word stays
# Forms the suffix rules would cut to another word though English uses them as words of their own, or though the
# word they would join is mostly read in another sense (a homograph). Chosen by English usage, not by any metric:
# - garments and eyewear named in the plural (shorts are not short, pants not panting, tights not tight, trunks not
#   a tree's trunk) and plurals with a sense of their own (the woods, autumn leaves, the news);
# - -ing nouns and adjectives (a building, a wedding, the evening, a parking lot, an earring, a winding road, a
#   raging river, matching shirts), including activities whose base is mostly the noun (training is not a train,
#   bowling not a bowl, rowing not a row);
# - -ed adjectives (tired, not tire; a wooded hill, a spotted dog, a stuffed animal) and verb forms whose base is
#   mostly a noun of another sense (a parked car is not in a park; dressed in red is not a dress; sticking out its
#   tongue is not a stick).
# Each keeps its own term; its own plural still joins it (buildings: building, earrings: earring).
LEXICAL_FORMS = frozenset({
    "shorts", "pants", "tights", "trunks", "overalls", "glasses", "sunglasses", "clothing",
    "woods", "leaves", "news", "goods",
    "building", "wedding", "evening", "morning", "ceiling", "parking", "boxing", "bedding", "awning", "earring",
    "winding", "raging", "matching", "training", "bowling", "rowing",
    "tired", "wooded", "spotted", "stuffed", "grounded", "parked", "dressed", "sticking",
})
# Plurals no suffix rule reaches (a vowel change or an old -en). The -men plurals (men, women, policemen) and -ves
# plurals (scarves: scarf, knives: knife) have rules of their own below; "people" keeps its term, as English reads
# it as a word of its own (a crowd, a nation) as often as the plural of "person".
IRREGULAR_PLURALS = {"children": "child", "feet": "foot", "teeth": "tooth", "geese": "goose", "mice": "mouse",
                     "oxen": "ox"}


def normalized_words(text: str) -> list[str]:
    """Every word of a text in order, stopwords included: NFKC, lower case, runs of letters and digits."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def is_content_word(word: str) -> bool:
    """A word worth a term: at least two characters and not a stopword (the rule of the piece vocabulary)."""
    return len(word) >= 2 and word not in STOPWORDS


def content_words(text: str) -> list[str]:
    """The text's content words, in order, each once."""
    return list(_content_words(text))


@functools.lru_cache(maxsize=1 << 17)  # a training run analyses each caption twice (vocabulary, then its rows)
def _content_words(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(w for w in normalized_words(text) if is_content_word(w)))


def _undouble(stem: str) -> str | None:
    """'runn' -> 'run', 'sitt' -> 'sit' (a doubled final consonant before -ing/-ed); None when not doubled."""
    if len(stem) > _MIN_STEM and stem[-1] == stem[-2] and stem[-1] not in "aeiousl":
        return stem[:-1]
    return None


def base_forms(word: str) -> list[str]:
    """The words an English inflected form may come from, likeliest first, by conservative suffix rules (plural
    -s/-es/-ies/-ves/-men, -ing, -ed; a doubled consonant undoubled, a silent e restored) and a few irregular
    plurals (``IRREGULAR_PLURALS``); only where a stem of at least three letters stays (-men: any); none for a word
    of its own (``LEXICAL_FORMS``). Candidates, not answers: a vocabulary takes the first one it holds as a word."""
    if not word.isalpha() or word in LEXICAL_FORMS:
        return []
    if word in IRREGULAR_PLURALS:
        return [IRREGULAR_PLURALS[word]]
    out: list[str] = []
    if word.endswith("men"):  # men, women, firemen: the -man word (a candidate only where the captions hold it)
        out.append(word[:-3] + "man")
    if word.endswith("ies") and len(word) - 3 >= _MIN_STEM:
        out.append(word[:-3] + "y")
    if word.endswith(("sses", "shes", "ches", "xes", "zes", "oes")) and len(word) - 2 >= _MIN_STEM:
        out.append(word[:-2])
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) - 1 >= _MIN_STEM:
        out.append(word[:-1])
    if word.endswith("ves") and len(word) - 3 >= _MIN_STEM:  # scarves, knives: after the plain plural (gloves)
        out.extend([word[:-3] + "f", word[:-3] + "fe"])
    for suffix in ("ing", "ed"):
        stem = word[:-len(suffix)]
        if word.endswith(suffix) and len(stem) >= _MIN_STEM and any(c in "aeiouy" for c in stem):
            undoubled = _undouble(stem)
            out.extend([undoubled] if undoubled else [stem + "e", stem])
    return out


@dataclass(frozen=True)
class WordVocabulary:
    """The head's terms as whole words: ``terms[i]`` (term id ``i + 1``) holds the forms it matches, the one shown
    first; id 0 pads. Without merged inflections each term is one word."""

    terms: tuple[tuple[str, ...], ...]
    inflections: bool = False  # a word the vocabulary lacks may match the term of its base form (base_forms)

    @functools.cached_property
    def _ids(self) -> dict[str, int]:
        return {form: n + 1 for n, forms in enumerate(self.terms) for form in forms}

    @functools.cached_property
    def _by_base(self) -> dict[str, int]:
        """Each base form of a term's forms -> that term (the first term to claim it)."""
        out: dict[str, int] = {}
        for n, forms in enumerate(self.terms):
            for form in forms:
                for base in base_forms(form):
                    out.setdefault(base, n + 1)
        return out

    def __len__(self) -> int:
        return len(self.terms)

    @property
    def words(self) -> list[str]:
        """Each term as shown, by id from 1."""
        return [forms[0] for forms in self.terms]

    @property
    def vocabulary(self) -> Vocabulary:
        """The term strings by id (id 0 the pad), for whatever names terms by id."""
        return Vocabulary([PAD_TERM, *self.words], [0])

    def term_of(self, word: str) -> int:
        """The term id of a (normalised) word, 0 when the vocabulary has none."""
        found = self._ids.get(word, 0)
        if found or not self.inflections:
            return found
        for candidate in (word, *base_forms(word)):  # the word is a known form's base, or shares one with it
            found = self._ids.get(candidate, 0) or self._by_base.get(candidate, 0)
            if found:
                return found
        return 0

    def rows(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, L) int64 term ids of each text's known content words (each term once, in order), 0 pads."""
        ids = [list(dict.fromkeys(t for t in map(self.term_of, content_words(text)) if t)) for text in texts]
        width = max((len(row) for row in ids), default=0) or 1
        out = np.zeros((len(ids), width), np.int64)
        for n, row in enumerate(ids):
            out[n, :len(row)] = row
        return torch.from_numpy(out)

    def unmatched(self, text: str) -> list[str]:
        """The text's content words that no term of the vocabulary matches, in order."""
        return [w for w in content_words(text) if not self.term_of(w)]

    @classmethod
    def from_captions(cls, captions: Iterable[str], *, min_df: int = 1, inflections: bool = False) -> WordVocabulary:
        """The content words of at least ``min_df`` captions. With inflections merged, a form joins the term of the
        first of its base forms that the captions also use (followed to its own base), or, where they use none,
        of the first base form it shares with another form (runs, running: run); the term needs ``min_df``
        captions by any of its forms, and it is shown as its most frequent form (ties: shorter, then
        alphabetical). Terms are in alphabetical order of what they show."""
        caption_words = [content_words(caption) for caption in captions]
        form_df = Counter(w for words in caption_words for w in words)
        shared = Counter(base for form in form_df for base in set(base_forms(form)))
        root = {form: _root(form, form_df, shared) if inflections else form for form in form_df}
        root_df = Counter(r for words in caption_words for r in {root[w] for w in words})
        groups: dict[str, list[str]] = {}
        for form in sorted(form_df, key=lambda f: (-form_df[f], len(f), f)):
            groups.setdefault(root[form], []).append(form)
        terms = sorted(tuple(forms) for r, forms in groups.items() if root_df[r] >= min_df)
        return cls(tuple(terms), inflections)


def _root(word: str, known: Counter[str], shared: Counter[str]) -> str:
    """The word an inflected form comes from, among ``known`` words, followed through at most three steps; for a
    form none of whose bases is known, the first base it shares with another form (``shared``: forms per base)."""
    start = word
    for _ in range(3):
        base = next((b for b in base_forms(word) if b in known), None)
        if base is None:
            break
        word = base
    if word == start:
        return next((b for b in base_forms(word) if shared[b] > 1), word)
    return word
