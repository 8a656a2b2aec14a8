"""Chinese-aware lexical matching of forwarded messages against verified clarifications.

A resident forwards a post, often long, and asks whether it is true; clarifications state a claim
in a short sentence. The score of a claim for a message is therefore its *claim coverage*: the
share of the claim's weighted content that the message contains, not a symmetric similarity.

The claim's content is seen two ways and the two coverages are averaged:

* **character bigrams** (and whole Latin/number tokens), matched exactly: robust to word
  segmentation and to unknown names, and sensitive to word order;
* **jieba words** of the claim, looked up as substrings of the message: robust to reordering and
  to a claim's words being split differently in the message.

A term weighs what it says in general Chinese times what it says within the knowledge base:

* general weight, from resources that ship inside the jieba package: for a bigram its surprisal
  ``-log P(bigram)`` estimated from the frequencies of jieba's dictionary words that contain it
  (backed off to independent characters when no word contains it); for a word its IDF from
  ``jieba.analyse``'s ``idf.txt`` (unknown words get the median, as jieba does);
* knowledge-base factor ``log(1 + N/df) / log(1 + N)``, 1 for a term in one claim and falling
  towards 0 for a term shared by every claim, so that what all clarifications talk about
  ("疫情", "新冠") weighs less than what tells them apart.

Each view's coverage is corrected for chance, like Cohen's kappa: a long post contains common
terms anyway, so the coverage it would reach by accident (from each term's probability per
character and the post's length) is subtracted and the rest rescaled to [0, 1]. A post that
contains the whole claim still scores 1. A term's probability is the larger of two estimates:

* in general Chinese, from jieba's dictionary as above;
* in the outbreak's own language: the *other* claims of the knowledge base are a sample of what
  posts on the topic say, so a term found in ``k`` of them, out of ``K`` characters, occurs
  about ``k / K`` times per character in a post that is on the topic but not about this claim.
  A true post about the same city and week as a rumor thereby earns little for the city and
  the week, while a post that carries what only this claim says is not marked down.

Weights depend only on jieba's resources and on the indexed claims, never on message traffic or
on an evaluation set. Very short messages (at most ``SHORT_QUERY_CHARS`` characters) are keyword
searches: claims containing the keyword are suggested, never answered. Empty, emoji-only or
punctuation-only messages are unknown.

The index is an in-memory cache rebuilt from the stored clarifications; it is meant to be used
from one thread (the event loop) and is not locked.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import opencc

logger = logging.getLogger(__name__)

ClaimId = int | str


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
    """Outcome of matching one message; candidates are best first.

    For ``answer``, ``candidates[0]`` is the answer; ``unknown`` has no candidates.
    """

    outcome: Literal["answer", "suggest", "unknown"]
    candidates: tuple[Candidate, ...]


# The score is the share of a claim's weighted content that the message carries beyond chance
# (averaged over the two views), so the limits read as rules rather than fitted numbers: answer
# when the message carries at least half of what the claim says, suggest when at least a third.
DEFAULT_THRESHOLDS = Thresholds(answer=0.5, suggest=1 / 3, max_suggestions=3)

# Messages whose content is this short (e.g. "口罩") are keyword searches.
SHORT_QUERY_CHARS = 4
# Only the head of a very long post is read: a forwarded rumor states its claim early, and the
# cost and the chance of accidental overlap both grow with length.
MAX_MESSAGE_CHARS = 3000
# An answer needs at least this many distinct claim bigrams in the message, i.e. a run of
# four characters' worth of the claim: a single shared word is never conclusive.
MIN_ANSWER_BIGRAMS = 3
# Words rarer than this in jieba's IDF table count; the rest (的, 是, 在, 了, ...) carry no claim.
MIN_WORD_IDF = 3.0

# --------------------------------------------------------------------------- normalization

_URL_RE = re.compile(r"(?:https?://|www\.)[\x21-\x7e]+", re.IGNORECASE)
_MENTION_RE = re.compile(r"@[^\s@#:,.;!?()\[\]<>\"'，。、：；！？（）【】《》“”‘’]{1,30}")
_BRACKET_EMOTICON_RE = re.compile(r"\[[^\[\]\s]{1,8}\]")
_SPACE_RE = re.compile(r"\s+")
_SPACE_NEAR_WIDE_RE = re.compile(r" (?=[^\x00-\x7f])|(?<=[^\x00-\x7f]) ")
# Emoji and other symbols, modifiers, variation selectors, zero-width, control and private-use
# characters. Only runs outside printable ASCII, CJK punctuation and CJK ideographs are checked
# character by character, which keeps long posts fast.
_DROPPED_CATEGORIES = frozenset({"So", "Sk", "Cf", "Cc", "Co", "Cs", "Cn", "Mn", "Me"})
_UNUSUAL_RE = re.compile(r"[^\x20-\x7e\u3001-\u3011\u4e00-\u9fff]+")

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUN_RE = re.compile(rf"[{_CJK}]+|[a-z0-9]+")
_NON_CONTENT_RE = re.compile(rf"[^{_CJK}a-z0-9]+")


def _keep_text(match: re.Match[str]) -> str:
    """Of an unusual run of characters, keep whitespace and anything that is not a symbol."""
    return "".join(
        char
        for char in match.group()
        if char.isspace() or unicodedata.category(char) not in _DROPPED_CATEGORIES
    )


# Traditional characters become simplified ones (OpenCC's character and phrase tables), so that a
# forward from Hong Kong, Macao, Taiwan or overseas matches a clarification written in simplified
# Chinese. The converter is read-only once loaded (about 15 ms).
_TO_SIMPLIFIED = opencc.OpenCC("t2s")


def normalize_text(text: str) -> str:
    """Return ``text`` in the comparable form that indexing and matching both use.

    Traditional Chinese becomes simplified; full-width forms become half-width (NFKC) and Latin
    letters lower case; URLs, @mentions,
    bracket emoticons such as ``[哭]``, emoji and invisible characters are removed, as is the
    ``#`` of ``#topic#`` markers (the topic's words stay); whitespace runs become one space, and
    spaces next to Chinese characters or punctuation disappear.
    """
    text = unicodedata.normalize("NFKC", _TO_SIMPLIFIED.convert(text)).lower()
    text = _URL_RE.sub(" ", text)
    text = _MENTION_RE.sub(" ", text)
    text = _BRACKET_EMOTICON_RE.sub(" ", text)
    text = text.replace("#", " ")
    text = _UNUSUAL_RE.sub(_keep_text, text)
    text = _SPACE_RE.sub(" ", text).strip()
    return _SPACE_NEAR_WIDE_RE.sub("", text)


def _compact(normalized: str) -> str:
    """Keep only Chinese characters, Latin letters and digits."""
    return _NON_CONTENT_RE.sub("", normalized)


def _bigram_features(normalized: str) -> dict[str, None]:
    """Character bigrams of each Chinese run, lone Chinese characters, and Latin/number tokens.

    Distinct, in order of first occurrence (a dict), so that sums over them do not depend on
    string hashing.
    """
    features: dict[str, None] = {}
    for run in _RUN_RE.findall(normalized):
        if run.isascii():
            if len(run) > 1 or run.isdigit():
                features[run] = None
        elif len(run) == 1:
            features[run] = None
        else:
            features.update(dict.fromkeys(run[i : i + 2] for i in range(len(run) - 1)))
    return features


# --------------------------------------------------------------------------- general lexicon


class _Lexicon:
    """General-Chinese term statistics read from the files that ship inside the jieba package."""

    def __init__(self) -> None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        self._jieba = jieba
        char_freq: dict[str, int] = defaultdict(int)
        bigram_freq: dict[str, int] = defaultdict(int)
        for word, count in jieba.dt.FREQ.items():
            if not count:
                continue
            for char in word:
                char_freq[char] += count
            for i in range(len(word) - 1):
                bigram_freq[word[i : i + 2]] += count
        self._char_freq = dict(char_freq)
        self._bigram_freq = dict(bigram_freq)
        self._word_freq = jieba.dt.FREQ
        self._total = sum(self._char_freq.values())

        # Read jieba.analyse's IDF table directly: importing jieba.analyse leaves a file open.
        self._idf: dict[str, float] = {}
        idf_path = Path(jieba.__file__).parent / "analyse" / "idf.txt"
        with idf_path.open(encoding="utf-8") as handle:
            for line in handle:
                word, _, value = line.strip().partition(" ")
                if value:
                    self._idf[word] = float(value)
        values = sorted(self._idf.values())
        # jieba gives words missing from the table the median IDF.
        self._median_idf = values[len(values) // 2]
        # No term says more than the rarest word of jieba's IDF table.
        self.max_weight = values[-1]

    def segment(self, normalized: str) -> list[str]:
        """Chinese or alphanumeric words of ``normalized`` text, in order."""
        return [w for w in self._jieba.lcut(normalized, HMM=True) if _RUN_RE.fullmatch(w)]

    def word_weight(self, word: str) -> float:
        """IDF of a word in jieba's general corpus (numbers: by their number of digits)."""
        if word.isdigit():
            return self._number_weight(word)
        return self._idf.get(word, self._median_idf)

    def bigram_weight(self, feature: str) -> float:
        """Surprisal ``-log P`` of a bigram, lone character or Latin/number token."""
        if feature.isascii():
            if feature.isdigit():
                return self._number_weight(feature)
            count = self._word_freq.get(feature, 0)
        elif len(feature) == 1:
            count = self._char_freq.get(feature, 0)
        else:
            first = self._char_freq.get(feature[0], 1)
            second = self._char_freq.get(feature[1], 1)
            independent = first * second / self._total
            count = max(self._bigram_freq.get(feature, 0), independent)
        if count <= 0:
            return self.max_weight
        return min(self.max_weight, math.log(self._total / count))

    def word_probability(self, word: str) -> float:
        """Chance that a given character position starts ``word`` in general text."""
        if word.isdigit():
            return math.exp(-self._number_weight(word))
        count = self._word_freq.get(word, 0)
        if count:
            return count / self._total
        probability = 1.0
        for char in word:
            probability *= self._char_freq.get(char, 1) / self._total
        return probability

    @staticmethod
    def _number_weight(digits: str) -> float:
        # Numbers are everywhere in news (dates, counts): one chance in 10 per digit, at most
        # three digits' worth.
        return min(len(digits), 3) * math.log(10)


_lexicon_lock = threading.Lock()
_lexicon_instance: _Lexicon | None = None


def _lexicon() -> _Lexicon:
    """The shared read-only lexicon, loaded on first use (about two seconds, once)."""
    global _lexicon_instance
    if _lexicon_instance is None:
        with _lexicon_lock:
            if _lexicon_instance is None:
                started = time.perf_counter()
                _lexicon_instance = _Lexicon()
                logger.info("rumor lexicon loaded in %.1f s", time.perf_counter() - started)
    return _lexicon_instance


def preload() -> None:
    """Load jieba's lexicon now (about two seconds, once per process), e.g. in a worker thread,
    rather than inside the first match or index update."""
    _lexicon()


# --------------------------------------------------------------------------- index


def _chance_corrected(
    coverage: float,
    total: float,
    terms: frozenset[str],
    view: _Postings,
    length: int,
    background_chars: int,
) -> float:
    """Coverage beyond what a text of ``length`` characters would reach by chance (kappa-like).

    A term of per-position probability ``p`` occurs somewhere in ``length`` characters with
    probability ``1 - exp(-length * p)``; the expected chance coverage is the weighted mean of
    that over the claim's terms, and the result rescales the remainder to [0, 1].

    ``p`` is the larger of the term's probability in general Chinese and in the topic: the
    other claims of the knowledge base (``background_chars`` characters of them) are a sample of
    what posts on this topic say, so a term that ``k`` other claims contain occurs about
    ``k / background_chars`` per position in a post on the topic that has nothing to do with
    this claim.
    """
    chance = (
        math.fsum(
            view.weights[t]
            * -math.expm1(
                -length * max(view.probability[t], (len(view.claims[t]) - 1) / background_chars)
            )
            for t in terms
        )
        / total
    )
    if chance >= 1:
        return 0.0
    return max(0.0, (coverage - chance) / (1 - chance))


@dataclass(frozen=True)
class _IndexedClaim:
    compact: str
    bigrams: frozenset[str]
    words: frozenset[str]
    order: int  # when it was added: the last tie-break, so results never depend on hashing


class _Postings:
    """Term -> claim ids, with general weights and knowledge-base factors."""

    def __init__(self) -> None:
        self.claims: dict[str, set[ClaimId]] = {}
        self.general: dict[str, float] = {}
        self.probability: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, term: str, claim_id: ClaimId, general_weight: float, probability: float) -> bool:
        """Record ``term`` in ``claim_id``; True when the term is new to the index."""
        ids = self.claims.get(term)
        if ids is None:
            self.claims[term] = {claim_id}
            self.general[term] = general_weight
            self.probability[term] = probability
            return True
        ids.add(claim_id)
        return False

    def discard(self, term: str, claim_id: ClaimId) -> bool:
        """Forget ``term`` in ``claim_id``; True when no claim has the term any more."""
        ids = self.claims.get(term)
        if ids is None:
            return False
        ids.discard(claim_id)
        if ids:
            return False
        del self.claims[term]
        del self.general[term]
        del self.probability[term]
        self.weights.pop(term, None)
        return True

    def reweigh(self, claim_count: int) -> None:
        """Recompute every term's weight for a knowledge base of ``claim_count`` claims."""
        norm = math.log(1 + claim_count)
        self.weights = {
            term: self.general[term] * math.log(1 + claim_count / len(ids)) / norm
            for term, ids in self.claims.items()
        }


class RumorIndex:
    """Verified claims, indexed for matching forwarded messages.

    ``add`` and ``remove`` are incremental (admins publish and withdraw clarifications);
    ``match`` reads only the claims that share a term with the message.
    """

    def __init__(self, claims: Iterable[Claim] = ()) -> None:
        self._claims: dict[ClaimId, _IndexedClaim] = {}
        self._added = 0
        self._chars = 0  # characters of all indexed claims (compact form)
        self._bigrams = _Postings()
        self._words = _Postings()
        self._word_prefixes: dict[str, int] = defaultdict(int)
        self._max_word_len = 1
        self._totals: dict[ClaimId, tuple[float, float]] = {}  # bigram view, word view
        self._stale = True
        for claim in claims:
            self.add(claim)

    def __len__(self) -> int:
        return len(self._claims)

    def __contains__(self, claim_id: object) -> bool:
        return claim_id in self._claims

    def add(self, claim: Claim) -> None:
        """Index ``claim``, replacing any claim with the same id."""
        lexicon = _lexicon()
        if claim.id in self._claims:
            self.remove(claim.id)
        normalized = normalize_text(claim.text)
        bigrams = frozenset(_bigram_features(normalized))
        words = frozenset(
            w for w in lexicon.segment(normalized) if lexicon.word_weight(w) >= MIN_WORD_IDF
        )
        self._added += 1
        self._claims[claim.id] = _IndexedClaim(_compact(normalized), bigrams, words, self._added)
        self._chars += len(self._claims[claim.id].compact)
        for feature in bigrams:
            weight = lexicon.bigram_weight(feature)
            self._bigrams.add(feature, claim.id, weight, math.exp(-weight))
        for word in words:
            word_args = (lexicon.word_weight(word), lexicon.word_probability(word))
            if self._words.add(word, claim.id, *word_args):
                for end in range(1, len(word)):
                    self._word_prefixes[word[:end]] += 1
                self._max_word_len = max(self._max_word_len, len(word))
        self._stale = True

    def remove(self, claim_id: ClaimId) -> None:
        """Forget the claim with ``claim_id``; an unknown id is ignored."""
        entry = self._claims.pop(claim_id, None)
        if entry is None:
            return
        self._chars -= len(entry.compact)
        for feature in entry.bigrams:
            self._bigrams.discard(feature, claim_id)
        for word in entry.words:
            if self._words.discard(word, claim_id):
                for end in range(1, len(word)):
                    prefix = word[:end]
                    self._word_prefixes[prefix] -= 1
                    if not self._word_prefixes[prefix]:
                        del self._word_prefixes[prefix]
        self._stale = True

    def match(self, text: str, thresholds: Thresholds) -> MatchResult:
        """Decide whether ``text`` is about a known claim: answer, suggest, or unknown."""
        # Normalizing mostly shrinks text: half as much again of raw text fills the budget.
        normalized = normalize_text(text[: MAX_MESSAGE_CHARS * 3 // 2])[:MAX_MESSAGE_CHARS]
        compact = _compact(normalized)
        if not compact or not self._claims:
            return MatchResult("unknown", ())
        self._refresh()
        if len(compact) <= SHORT_QUERY_CHARS:
            # Spaces between Chinese words vanish in normalization but separate keywords here.
            keywords = [
                keyword
                for part in text.split()
                for keyword in _NON_CONTENT_RE.split(normalize_text(part))
                if keyword
            ]
            return self._match_keywords(keywords, thresholds)
        features = _bigram_features(normalized)
        scores = self._score(normalized, features, min(thresholds.suggest, thresholds.answer))
        claims = self._claims
        # Ties go to the claim with more matched content (the more specific one), then the
        # earlier-added one.
        ordered = sorted(
            scores.items(), key=lambda item: (-item[1][0], -item[1][1], claims[item[0]].order)
        )
        ranked = [(cid, score) for cid, (score, _) in ordered]
        if not ranked:
            return MatchResult("unknown", ())
        best_id, best_score = ranked[0]
        suggested = tuple(
            Candidate(cid, score)
            for cid, score in ranked[: thresholds.max_suggestions]
            if score >= thresholds.suggest
        )
        evidence = sum(feature in features for feature in claims[best_id].bigrams)
        if best_score >= thresholds.answer and evidence >= MIN_ANSWER_BIGRAMS:
            others = tuple(c for c in suggested if c.claim_id != best_id)
            return MatchResult("answer", (Candidate(best_id, best_score), *others))
        if suggested:
            return MatchResult("suggest", suggested)
        return MatchResult("unknown", ())

    # ----------------------------------------------------------------------- internals

    def _refresh(self) -> None:
        """Recompute term weights and claim totals after the knowledge base changed."""
        if not self._stale:
            return
        count = len(self._claims)
        self._bigrams.reweigh(count)
        self._words.reweigh(count)
        bigram_weights, word_weights = self._bigrams.weights, self._words.weights
        self._totals = {
            cid: (
                math.fsum(bigram_weights[t] for t in entry.bigrams),
                math.fsum(word_weights[t] for t in entry.words),
            )
            for cid, entry in self._claims.items()
        }
        self._stale = False

    def _find_words(self, normalized: str) -> dict[str, None]:
        """Indexed claim words that occur as substrings of the message."""
        found: dict[str, None] = {}  # ordered, like _bigram_features
        postings, prefixes, longest = self._words.claims, self._word_prefixes, self._max_word_len
        for run in _RUN_RE.findall(normalized):
            if run.isascii():
                if run in postings:
                    found[run] = None
                continue
            size = len(run)
            for start in range(size):
                for end in range(start + 1, min(size, start + longest) + 1):
                    piece = run[start:end]
                    if piece in postings:
                        found[piece] = None
                    if piece not in prefixes:
                        break
        return found

    def _score(
        self, normalized: str, features: dict[str, None], floor: float
    ) -> dict[ClaimId, tuple[float, float]]:
        """Chance-corrected claim coverage of the claims scoring ``floor`` or more.

        Each score comes with the claim's matched bigram weight, to break ties.

        ``features`` are the message's bigram features; the inverted indexes mean that only
        claims sharing a term with the message are read.
        """
        bigram_hits: dict[ClaimId, float] = defaultdict(float)
        postings, weights = self._bigrams.claims, self._bigrams.weights
        for feature in features:
            ids = postings.get(feature)
            if ids:
                weight = weights[feature]
                for cid in ids:
                    bigram_hits[cid] += weight
        word_hits: dict[ClaimId, float] = defaultdict(float)
        postings, weights = self._words.claims, self._words.weights
        for word in self._find_words(normalized):
            weight = weights[word]
            for cid in postings[word]:
                word_hits[cid] += weight
        scores: dict[ClaimId, tuple[float, float]] = {}
        length = len(normalized)
        totals = self._totals
        for cid in bigram_hits.keys() | word_hits.keys():
            bigram_total, word_total = totals[cid]
            raw, views = 0.0, 0
            if bigram_total > 0:
                raw += bigram_hits.get(cid, 0.0) / bigram_total
                views += 1
            if word_total > 0:
                raw += word_hits.get(cid, 0.0) / word_total
                views += 1
            if not views or raw < floor * views:
                continue  # correcting for chance only lowers a score
            entry = self._claims[cid]
            background = max(1, self._chars - len(entry.compact))
            corrected = 0.0
            for hit, total, terms, view in (
                (bigram_hits.get(cid, 0.0), bigram_total, entry.bigrams, self._bigrams),
                (word_hits.get(cid, 0.0), word_total, entry.words, self._words),
            ):
                if total > 0:
                    corrected += _chance_corrected(
                        hit / total, total, terms, view, length, background
                    )
            scores[cid] = (min(1.0, corrected / views), bigram_hits.get(cid, 0.0))
        return scores

    def _match_keywords(self, keywords: list[str], thresholds: Thresholds) -> MatchResult:
        """Suggest the claims whose text contains every keyword (never a confident answer)."""
        features: dict[str, None] = {}
        for keyword in keywords:
            features.update(_bigram_features(keyword))
        candidate_ids: Iterable[ClaimId]
        if features and all(len(keyword) > 1 for keyword in keywords):
            id_sets = [self._bigrams.claims.get(f, set()) for f in features]
            candidate_ids = set.intersection(*id_sets)
        else:  # a lone character is only indexed where it stands alone: read every claim
            candidate_ids = self._claims.keys()
        weights = self._bigrams.weights
        hits = []
        for cid in candidate_ids:
            entry = self._claims[cid]
            if not all(keyword in entry.compact for keyword in keywords):
                continue
            total = self._totals[cid][0]
            covered = math.fsum(weights[f] for f in features if f in entry.bigrams)
            hits.append(Candidate(cid, covered / total if total > 0 else 0.0))
        if not hits:
            return MatchResult("unknown", ())
        # The keywords' share of each claim ranks the focused claims first.
        hits.sort(key=lambda c: (-c.score, self._claims[c.claim_id].order))
        return MatchResult("suggest", tuple(hits[: thresholds.max_suggestions]))
