"""Chinese-aware lexical matching of forwarded messages against verified clarifications.

Draft under measurement.
"""

from __future__ import annotations

import math
import os
import re
import threading
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

ClaimId = int | str

# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Claim:
    """The claim of one clarification (optionally followed by extra keyword text)."""

    id: ClaimId
    text: str


@dataclass(frozen=True)
class Thresholds:
    """Score limits: at or above ``answer`` answer outright, at or above ``suggest`` suggest."""

    answer: float
    suggest: float
    max_suggestions: int = 3


@dataclass(frozen=True)
class Candidate:
    """One clarification that a message may be about, with its score in [0, 1]."""

    claim_id: ClaimId
    score: float


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching one message; candidates are best first."""

    outcome: Literal["answer", "suggest", "unknown"]
    candidates: tuple[Candidate, ...]


DEFAULT_THRESHOLDS = Thresholds(answer=0.6, suggest=0.4, max_suggestions=3)

# --------------------------------------------------------------------------- normalization

_URL_RE = re.compile(r"(?:https?://|www\.)[\x21-\x7e]+", re.IGNORECASE)
_MENTION_RE = re.compile(r"@[^\s@#:,.;!?()\[\]<>\"'，。、：；！？（）【】《》“”‘’]{1,30}")
_BRACKET_EMOTICON_RE = re.compile(r"\[[^\[\]\s]{1,8}\]")
_SPACE_RE = re.compile(r"\s+")
_SPACE_NEAR_WIDE_RE = re.compile(r" (?=[^\x00-\x7f])|(?<=[^\x00-\x7f]) ")
_DROPPED_CATEGORIES = frozenset({"So", "Sk", "Cf", "Co", "Cs", "Cn", "Cc", "Mn", "Me"})


def _drop_symbols(text: str) -> str:
    """Remove emoji, pictographs, format and control characters; keep whitespace as a space."""
    kept = []
    for char in text:
        if char.isspace():
            kept.append(" ")
        elif unicodedata.category(char) not in _DROPPED_CATEGORIES:
            kept.append(char)
    return "".join(kept)


def normalize_text(text: str) -> str:
    """Return ``text`` in the comparable form that indexing and matching both use.

    Full-width forms become half-width (NFKC), Latin letters lower case; URLs, @mentions, the
    ``#`` of ``#topic#`` markers (the topic words stay), bracket emoticons such as ``[哭]``,
    emoji and invisible characters are removed; whitespace runs become one space, and spaces
    next to Chinese characters or punctuation disappear.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _URL_RE.sub(" ", text)
    text = _MENTION_RE.sub(" ", text)
    text = _BRACKET_EMOTICON_RE.sub(" ", text)
    text = text.replace("#", " ")
    text = _drop_symbols(text)
    text = _SPACE_RE.sub(" ", text).strip()
    return _SPACE_NEAR_WIDE_RE.sub("", text)


# --------------------------------------------------------------------------- term weights

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUN_RE = re.compile(rf"[{_CJK}]+|[a-z0-9]+")
_CJK_RE = re.compile(rf"[{_CJK}]")
_ALNUM_RE = re.compile(r"[a-z0-9]+")
_CONTENT_RE = re.compile(rf"[{_CJK}a-z0-9]")

MAX_POST_CHARS = 3000
MIN_TERM_IDF = 3.0
NUMBER_IDF = 4.0

_jieba_lock = threading.Lock()
_jieba_ready = False
_idf: dict[str, float] = {}
_median_idf = 0.0


def _ensure_jieba() -> None:
    """Load jieba's dictionary and IDF table once, quietly."""
    global _jieba_ready, _median_idf
    if _jieba_ready:
        return
    with _jieba_lock:
        if _jieba_ready:
            return
        import logging

        import jieba
        import jieba.analyse

        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        path = os.path.join(os.path.dirname(jieba.analyse.__file__), "idf.txt")
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                word, _, value = line.strip().partition(" ")
                if value:
                    _idf[word] = float(value)
        values = sorted(_idf.values())
        _median_idf = values[len(values) // 2]
        _jieba_ready = True


def _general_idf(term: str) -> float:
    """IDF of ``term`` in jieba's general corpus; unknown words get the median, like jieba."""
    if term.isdigit():
        return NUMBER_IDF if len(term) > 1 else 0.0
    return _idf.get(term, _median_idf)


def _segment(text: str) -> list[str]:
    """Split normalized text into jieba words that are Chinese or alphanumeric."""
    import jieba

    _ensure_jieba()
    words = []
    for word in jieba.lcut(text, HMM=True):
        word = word.strip()
        if word and (_CJK_RE.fullmatch(word[0]) or _ALNUM_RE.fullmatch(word)):
            if all(_CONTENT_RE.match(ch) for ch in word):
                words.append(word)
    return words


# --------------------------------------------------------------------------- index


class RumorIndex:
    """An inverted index of claims, matched by how much of a claim's weighted terms a post holds."""

    def __init__(self, claims: Iterable[Claim] = (), *, kb_weight: bool = True) -> None:
        self._claims: dict[ClaimId, tuple[str, frozenset[str]]] = {}
        self._postings: dict[str, set[ClaimId]] = defaultdict(set)
        self._prefixes: dict[str, int] = defaultdict(int)
        self._max_len = 1
        self._kb_weight = kb_weight
        self._weights: dict[str, float] = {}
        self._totals: dict[ClaimId, float] = {}
        self._dirty = True
        for claim in claims:
            self.add(claim)

    def __len__(self) -> int:
        return len(self._claims)

    def add(self, claim: Claim) -> None:
        """Index ``claim``, replacing any claim with the same id."""
        if claim.id in self._claims:
            self.remove(claim.id)
        normalized = normalize_text(claim.text)
        terms = frozenset(w for w in _segment(normalized) if _general_idf(w) >= MIN_TERM_IDF)
        self._claims[claim.id] = (normalized, terms)
        for term in terms:
            if not self._postings[term]:
                for end in range(1, len(term)):
                    self._prefixes[term[:end]] += 1
            self._postings[term].add(claim.id)
            self._max_len = max(self._max_len, len(term))
        self._dirty = True

    def remove(self, claim_id: ClaimId) -> None:
        """Forget the claim with ``claim_id``; unknown ids are ignored."""
        entry = self._claims.pop(claim_id, None)
        if entry is None:
            return
        for term in entry[1]:
            posting = self._postings[term]
            posting.discard(claim_id)
            if not posting:
                del self._postings[term]
                for end in range(1, len(term)):
                    self._prefixes[term[:end]] -= 1
                    if not self._prefixes[term[:end]]:
                        del self._prefixes[term[:end]]
        self._dirty = True

    def _refresh(self) -> None:
        n = len(self._claims)
        self._weights = {}
        for term, posting in self._postings.items():
            weight = _general_idf(term)
            if self._kb_weight and n > 1:
                weight *= math.log(1 + n / len(posting)) / math.log(1 + n)
            self._weights[term] = weight
        self._totals = {
            cid: sum(self._weights[t] for t in terms) for cid, (_, terms) in self._claims.items()
        }
        self._dirty = False

    def _find_terms(self, text: str) -> set[str]:
        found: set[str] = set()
        postings, prefixes, max_len = self._postings, self._prefixes, self._max_len
        for run in _RUN_RE.findall(text):
            if not _CJK_RE.match(run[0]):
                if run in postings:
                    found.add(run)
                continue
            n = len(run)
            for i in range(n):
                for j in range(i + 1, min(n, i + max_len) + 1):
                    piece = run[i:j]
                    if piece in postings:
                        found.add(piece)
                    if piece not in prefixes:
                        break
        return found

    def score(self, text: str) -> dict[ClaimId, float]:
        """Claim coverage of every claim sharing a term with ``text``."""
        if self._dirty:
            self._refresh()
        normalized = normalize_text(text)[:MAX_POST_CHARS]
        acc: dict[ClaimId, float] = defaultdict(float)
        for term in self._find_terms(normalized):
            weight = self._weights[term]
            for cid in self._postings[term]:
                acc[cid] += weight
        return {cid: value / self._totals[cid] for cid, value in acc.items() if self._totals[cid]}

    def match(self, text: str, thresholds: Thresholds) -> MatchResult:
        """Match a resident's message against the indexed claims."""
        scores = self.score(text)
        ranked = sorted(scores.items(), key=lambda item: -item[1])
        cands = tuple(Candidate(cid, s) for cid, s in ranked[: thresholds.max_suggestions])
        if cands and cands[0].score >= thresholds.answer:
            return MatchResult("answer", cands)
        kept = tuple(c for c in cands if c.score >= thresholds.suggest)
        if kept:
            return MatchResult("suggest", kept)
        return MatchResult("unknown", ())
