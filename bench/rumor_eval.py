"""Measure the rumor matcher on the CHECKED-based evaluation set, beside a bigram TF-IDF baseline.

Run from the repository root::

    python bench/rumor_eval.py [--data DIR] [--with-explanation]

The data directory defaults to ``../shared/data/rumors`` relative to the repository and can be
set with ``--data`` or the ``GRIDBOT_RUMOR_DATA`` environment variable. Every clarification is
indexed (claim text only, as the product does, unless ``--with-explanation``), each query and
negative is sent as a resident's message, and the shares below are printed. The matcher runs at
its shipped ``DEFAULT_THRESHOLDS``; nothing here feeds back into the matcher.

The baseline is a plain character-bigram TF-IDF cosine over the claims; its threshold is, as in
the data set's README, the lowest one that answers at most 1% of negatives, i.e. chosen on this
very set (an oracle operating point, which flatters it). For a like-for-like comparison the
matcher is also shown at its own such oracle threshold, clearly labelled, and at the plain-score
threshold that answers as many negatives as its shipped decision does: a decision rule (key words,
margins, windows, ...) adds separation only if it answers more queries right than that row, not
merely more than the previous shipped figure (moving along the same curve is not an improvement).

Second-stage rules measured so far against that row (aggregate figures only, on the top
candidate), none of which beat it: the claim's best local window (2x its length), in-order
(weighted LCS) bigram coverage, the claim's key word (its highest-weight word in no other claim)
for scores between the suggest and answer levels, a character-unigram or skip-bigram view, synonym
expansion of claim words (Cilin), the share of the post's own top TF-IDF words that the claim
holds, and post length; the top-1/top-2 margin and debunk cues (辟谣, 不实, ...) did not even
differ between the two kinds of post near the threshold. Nor did, measured later the same way:
requiring the claim's place names (jieba's ``ns`` words) in the message, or only refusing when the
message names another place instead (+2 queries at the oracle point: mutated rumors move from city
to city); general weights from wordfreq's 2021 Chinese frequencies, which know 疫情 and 新冠, in
place of jieba's; leaving other wordings of the same rumor out of a claim's topic background; and
scoring each clause of a claim on its own (short clauses are whole in many true posts). The plain
score's best <= 1% point stays at about 85% right on this set: that is the figure a new rule has
to beat. The posts it misses paraphrase the claim (宝宝/娃娃, 财产/收入, 第三宿主/第三病毒传播者)
while the true posts above it share the claim's subject but not its predicate, which no lexical
measure tried here tells apart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from flows.rumor_match import (  # noqa: E402
    DEFAULT_THRESHOLDS,
    Claim,
    RumorIndex,
    Thresholds,
    normalize_text,
)

T = TypeVar("T")

PADDED_CLAIMS = 10_000
MAX_NEGATIVE_WRONG = 0.01
# Thresholds that return the best-ranked claim whatever its score, for top-1 accuracy.
RANK_ONLY = Thresholds(answer=math.inf, suggest=0.0, max_suggestions=1)


@dataclass(frozen=True)
class Dataset:
    """The evaluation set: clarifications, rumor-spreading queries, and true negatives."""

    claims: list[Claim]
    group_of: dict[str, str]
    queries: list[tuple[str, str]]  # (text, group)
    negatives: list[str]


def default_data_dir() -> Path:
    """``GRIDBOT_RUMOR_DATA`` if set, else ``../shared/data/rumors`` beside the repository."""
    env = os.environ.get("GRIDBOT_RUMOR_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "rumors"


def read_jsonl(path: Path) -> list[dict[str, str]]:
    """Rows of a JSON-lines file."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_dataset(data_dir: Path, with_explanation: bool) -> Dataset:
    """Load factchecks, queries and negatives from ``data_dir``."""
    factchecks = read_jsonl(data_dir / "factchecks.jsonl")
    claims = [
        Claim(row["id"], row["claim"] + (f" {row['explanation']}" if with_explanation else ""))
        for row in factchecks
    ]
    return Dataset(
        claims=claims,
        group_of={row["id"]: row["group"] for row in factchecks},
        queries=[(row["text"], row["group"]) for row in read_jsonl(data_dir / "queries.jsonl")],
        negatives=[row["text"] for row in read_jsonl(data_dir / "negatives.jsonl")],
    )


def synthetic_claims(count: int, seed: int = 20200123) -> list[Claim]:
    """Claims made of random general-vocabulary words from jieba's dictionary.

    They share the real claims' length range and vocabulary statistics but none of their
    meaning, and nothing of the evaluation posts.
    """
    import jieba

    jieba.setLogLevel(40)
    jieba.initialize()
    frequent = sorted(
        (w for w, c in jieba.dt.FREQ.items() if c and len(w) >= 2 and re.fullmatch(r"[一-鿿]+", w)),
        key=lambda w: -jieba.dt.FREQ[w],
    )[:50_000]
    rng = random.Random(seed)
    return [
        Claim(f"synthetic-{i}", "".join(rng.sample(frequent, rng.randint(4, 12))))
        for i in range(count)
    ]


# --------------------------------------------------------------------------- baseline


_BASELINE_RUN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[a-z0-9]+")


def bigram_counts(text: str) -> Counter[str]:
    """Character bigrams of each Chinese run (lone characters and Latin tokens kept whole)."""
    counts: Counter[str] = Counter()
    for run in _BASELINE_RUN_RE.findall(normalize_text(text)):
        if run.isascii() or len(run) == 1:
            counts[run] += 1
        else:
            counts.update(run[i : i + 2] for i in range(len(run) - 1))
    return counts


class BigramTfidfBaseline:
    """Character-bigram TF-IDF vectors of the claims; a message scores its best cosine."""

    def __init__(self, claims: Sequence[Claim]) -> None:
        docs = [bigram_counts(c.text) for c in claims]
        df = Counter(term for doc in docs for term in doc)
        n = len(docs)
        self._idf = {t: math.log((1 + n) / (1 + k)) + 1 for t, k in df.items()}
        self._ids = [c.id for c in claims]
        self._vectors = [self._vector(doc) for doc in docs]

    def _vector(self, counts: Counter[str]) -> dict[str, float]:
        vec = {t: k * self._idf[t] for t, k in counts.items() if t in self._idf}
        norm = math.sqrt(sum(v * v for v in vec.values()))
        return {t: v / norm for t, v in vec.items()} if norm else {}

    def best(self, text: str) -> tuple[str | int | None, float]:
        """The best claim id and its cosine."""
        query = self._vector(bigram_counts(text))
        best_id, best_score = None, 0.0
        for cid, vec in zip(self._ids, self._vectors, strict=True):
            score = sum(w * vec.get(t, 0.0) for t, w in query.items())
            if score > best_score:
                best_id, best_score = cid, score
        return best_id, best_score


# --------------------------------------------------------------------------- measuring


def timed(fn: Callable[[str], T], texts: Sequence[str]) -> tuple[list[T], list[float], float]:
    """Results of ``fn`` on each text, the wall-clock milliseconds each call took, and the
    process CPU milliseconds of the whole batch (steadier than wall time on a shared machine)."""
    results: list[T] = []
    millis: list[float] = []
    cpu_start = time.process_time()
    for text in texts:
        start = time.perf_counter()
        results.append(fn(text))
        millis.append((time.perf_counter() - start) * 1000)
    return results, millis, (time.process_time() - cpu_start) * 1000


def latency(millis: list[float], cpu_millis: float) -> str:
    """Mean, median and 99th percentile of per-message wall milliseconds, and mean CPU time."""
    ordered = sorted(millis)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return (
        f"mean {statistics.fmean(ordered):.2f} ms, p50 {ordered[len(ordered) // 2]:.2f} ms, "
        f"p99 {p99:.2f} ms; CPU mean {cpu_millis / len(ordered):.2f} ms"
    )


def pct(part: float, whole: int) -> str:
    """A share as a percentage with its count."""
    return f"{100 * part / whole:5.1f}% ({int(part)}/{whole})"


def oracle_threshold(negative_scores: Sequence[float], allowed: int | None = None) -> float:
    """The lowest threshold (just above a negative's score) that answers at most ``allowed``
    negatives, by default 1% of them."""
    if allowed is None:
        allowed = math.floor(MAX_NEGATIVE_WRONG * len(negative_scores))
    ordered = sorted(negative_scores, reverse=True)
    return ordered[allowed] + 1e-9 if allowed < len(ordered) else 0.0


def report_matcher(data: Dataset, index: RumorIndex, label: str) -> dict[str, object]:
    """Print the matcher's figures at the shipped thresholds; return raw material for more."""
    texts = [text for text, _ in data.queries]
    results, q_millis, q_cpu = timed(lambda t: index.match(t, DEFAULT_THRESHOLDS), texts)
    neg_results, n_millis, n_cpu = timed(
        lambda t: index.match(t, DEFAULT_THRESHOLDS), data.negatives
    )
    nq, nn = len(texts), len(data.negatives)
    right = wrong = suggested = suggested_right = unknown = 0
    for result, (_, group) in zip(results, data.queries, strict=True):
        groups = [data.group_of.get(str(c.claim_id)) for c in result.candidates]
        if result.outcome == "answer":
            right += groups[0] == group
            wrong += groups[0] != group
        elif result.outcome == "suggest":
            suggested += 1
            suggested_right += group in groups
        else:
            unknown += 1
    neg_answered = sum(r.outcome == "answer" for r in neg_results)
    neg_suggested = sum(r.outcome == "suggest" for r in neg_results)
    top1 = 0
    query_best: list[tuple[float, bool]] = []
    for text, group in data.queries:
        ranked = index.match(text, RANK_ONLY).candidates
        ok = bool(ranked) and data.group_of.get(str(ranked[0].claim_id)) == group
        top1 += ok
        query_best.append((ranked[0].score if ranked else 0.0, ok))
    negative_best = []
    for text in data.negatives:
        ranked = index.match(text, RANK_ONLY).candidates
        negative_best.append(ranked[0].score if ranked else 0.0)

    shipped = DEFAULT_THRESHOLDS
    print(
        f"\n== matcher, {label}: {len(index)} claims indexed; DEFAULT_THRESHOLDS answer "
        f">= {shipped.answer:.3f}, suggest >= {shipped.suggest:.3f}, "
        f"at most {shipped.max_suggestions} suggestions"
    )
    print(f"  queries answered right          {pct(right, nq)}")
    print(f"  queries answered wrong          {pct(wrong, nq)}")
    print(f"  queries suggested               {pct(suggested, nq)}")
    print(f"    right group among suggestions {pct(suggested_right, max(suggested, 1))}")
    print(f"  queries unknown                 {pct(unknown, nq)}")
    print(f"  negatives wrongly answered      {pct(neg_answered, nn)}")
    print(f"  negatives given suggestions     {pct(neg_suggested, nn)}")
    print(f"  top-1 group accuracy (queries)  {pct(top1, nq)}")
    print(f"  latency per message             {latency(q_millis + n_millis, q_cpu + n_cpu)}")
    return {
        "query_best": query_best,
        "negative_best": negative_best,
        "right": right,
        "negatives_answered": neg_answered,
    }


def report_baseline(data: Dataset) -> None:
    """Print the bigram TF-IDF cosine baseline at its <= 1% oracle threshold."""
    baseline = BigramTfidfBaseline(data.claims)
    texts = [text for text, _ in data.queries]
    q_best, q_millis, q_cpu = timed(baseline.best, texts)
    n_best, n_millis, n_cpu = timed(baseline.best, data.negatives)
    n_scores = [score for _, score in n_best]
    threshold = oracle_threshold(n_scores)
    nq, nn = len(texts), len(n_scores)
    top1 = right = 0
    for (cid, score), (_, group) in zip(q_best, data.queries, strict=True):
        ok = cid is not None and data.group_of[str(cid)] == group
        top1 += ok
        right += ok and score >= threshold
    wrong = sum(score >= threshold for score in n_scores)
    print(f"\n== baseline: character-bigram TF-IDF cosine over {len(data.claims)} claims")
    print(f"  oracle threshold (<= 1% of negatives, fitted on this set) {threshold:.3f}")
    print(f"  queries answered right          {pct(right, nq)}")
    print(f"  negatives wrongly answered      {pct(wrong, nn)}")
    print(f"  top-1 group accuracy (queries)  {pct(top1, nq)}")
    print(f"  latency per message             {latency(q_millis + n_millis, q_cpu + n_cpu)}")


def report_sensitivity(raw: dict[str, object]) -> None:
    """Matcher scores at other answer thresholds: measurement only, the defaults are not fitted."""
    query_best: list[tuple[float, bool]] = raw["query_best"]  # type: ignore[assignment]
    negative_best: list[float] = raw["negative_best"]  # type: ignore[assignment]
    nq, nn = len(query_best), len(negative_best)
    oracle = oracle_threshold(negative_best)
    print("\n== matcher score, other answer thresholds (measurement only; defaults not fitted)")
    print("  (ignores the short-keyword and minimum-evidence rules; top-1 group at each score)")
    shipped_wrong = int(raw["negatives_answered"])  # type: ignore[call-overload]
    rows = [
        ("oracle <= 1% wrong", oracle),
        (f"as shipped, {shipped_wrong} wrong", oracle_threshold(negative_best, shipped_wrong)),
        *((f"{t:.2f}", t) for t in (0.4, 0.45, 0.5, 0.6)),
    ]
    for name, threshold in rows:
        right = sum(ok and score >= threshold for score, ok in query_best)
        wrong = sum(score >= threshold for score in negative_best)
        print(
            f"  answer >= {name:<20} ({threshold:.3f}): right {pct(right, nq)}, "
            f"negatives answered {pct(wrong, nn)}"
        )
    shipped_right = int(raw["right"])  # type: ignore[call-overload]
    print(
        f"  The shipped decision: right {pct(shipped_right, nq)} with {shipped_wrong} negatives "
        "answered.\n  A decision rule separates rumors from true posts better than the score "
        "alone only if it\n  beats the row 'as shipped' (same negatives answered)."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, run every measurement and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="evaluation set directory")
    parser.add_argument(
        "--with-explanation",
        action="store_true",
        help="index claim + explanation (the product indexes the claim only)",
    )
    args = parser.parse_args(argv)
    data_dir = args.data or default_data_dir()
    data = load_dataset(data_dir, args.with_explanation)
    print(f"data: {data_dir}")
    print(
        f"{len(data.claims)} clarifications in {len(set(data.group_of.values()))} groups, "
        f"{len(data.queries)} queries, {len(data.negatives)} negatives; indexed text: "
        f"{'claim + explanation' if args.with_explanation else 'claim only'}"
    )

    start = time.perf_counter()
    index = RumorIndex(data.claims)
    index.match("预热", DEFAULT_THRESHOLDS)
    print(f"index built in {time.perf_counter() - start:.2f} s (includes loading jieba's lexicon)")
    raw = report_matcher(data, index, "real claims only")

    padding = synthetic_claims(PADDED_CLAIMS - len(data.claims))
    start = time.perf_counter()
    for claim in padding:
        index.add(claim)
    index.match("预热", DEFAULT_THRESHOLDS)
    print(f"\npadded with {len(padding)} synthetic claims in {time.perf_counter() - start:.2f} s")
    report_matcher(data, index, f"padded to {PADDED_CLAIMS} claims")
    print(
        "  (synthetic claims dilute the knowledge-base factor of the real ones, so the padded\n"
        "   accuracy is shown to check robustness; the padded run is about latency)"
    )

    report_baseline(data)
    report_sensitivity(raw)


if __name__ == "__main__":
    main()
