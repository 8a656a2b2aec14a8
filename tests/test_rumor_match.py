"""The rumor matcher: outcomes, keyword queries, long posts, index updates and normalization.

Every claim here is invented for the tests; none comes from the evaluation set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.rumor_match import (
    DEFAULT_THRESHOLDS,
    MAX_MESSAGE_CHARS,
    Candidate,
    Claim,
    MatchResult,
    RumorIndex,
    Thresholds,
    normalize_text,
)

CLAIMS = (
    Claim(1, "喝高度白酒可以预防新冠病毒感染"),
    Claim(2, "小区门口的快递柜会传播病毒，取件必须戴两层手套"),
    Claim(3, "明天起全市所有超市停业，市民要提前囤菜"),
    Claim(4, "用淡盐水漱口可以杀死喉咙里的病毒"),
    Claim("garlic", "每天吃生大蒜能够预防感染"),
)

FORWARDED_POST = (
    "【紧急扩散】群里都在传：明天起全市所有超市停业，市民要提前囤菜！我妈已经去排队了，"
    "大家赶紧去买米买油，别等到最后什么都买不到。转给家里人看看，宁可信其有。"
)

UNRELATED_FILLER = "今天下午社区组织志愿者给独居老人送去了新鲜蔬菜和鸡蛋，大家辛苦了。"


@pytest.fixture(scope="module")
def index() -> RumorIndex:
    return RumorIndex(CLAIMS)


def claim_ids(result: MatchResult) -> list[int | str]:
    return [candidate.claim_id for candidate in result.candidates]


def test_long_post_containing_a_claim_is_answered(index: RumorIndex) -> None:
    result = index.match(FORWARDED_POST, DEFAULT_THRESHOLDS)

    assert result.outcome == "answer"
    assert result.candidates[0].claim_id == 3
    assert result.candidates[0].score == pytest.approx(1.0)


def test_claim_reworded_in_a_question_is_answered(index: RumorIndex) -> None:
    result = index.match("网传吃大蒜可以预防感染，每天吃生大蒜就不会得病", DEFAULT_THRESHOLDS)

    assert result.outcome == "answer"
    assert result.candidates[0].claim_id == "garlic"


def test_partial_overlap_is_suggested_not_answered(index: RumorIndex) -> None:
    result = index.match("听说喝白酒能防新冠，真的假的", DEFAULT_THRESHOLDS)

    assert result.outcome == "suggest"
    assert claim_ids(result) == [1]
    score = result.candidates[0].score
    assert DEFAULT_THRESHOLDS.suggest <= score < DEFAULT_THRESHOLDS.answer


def test_unrelated_message_is_unknown(index: RumorIndex) -> None:
    result = index.match(UNRELATED_FILLER + "感谢网格员！", DEFAULT_THRESHOLDS)

    assert result == MatchResult("unknown", ())


def test_candidates_are_best_first_and_bounded(index: RumorIndex) -> None:
    everything = Thresholds(answer=1.1, suggest=0.0, max_suggestions=2)

    result = index.match("病毒会不会通过快递柜和超市传播？喝白酒有没有用？", everything)

    assert result.outcome == "suggest"
    assert len(result.candidates) == 2
    scores = [candidate.score for candidate in result.candidates]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)


@pytest.mark.parametrize(
    ("keyword", "expected"),
    [("快递柜", [2]), ("超市", [3]), ("大蒜", ["garlic"]), (" 盐水！", [4])],
)
def test_short_keyword_query_suggests_claims_containing_it(
    index: RumorIndex, keyword: str, expected: list[int | str]
) -> None:
    result = index.match(keyword, DEFAULT_THRESHOLDS)

    assert result.outcome == "suggest"
    assert claim_ids(result) == expected


def test_short_keyword_in_several_claims_suggests_at_most_the_maximum(index: RumorIndex) -> None:
    result = index.match("病毒", Thresholds(answer=0.5, suggest=0.3, max_suggestions=2))

    assert result.outcome == "suggest"
    assert len(result.candidates) == 2
    assert set(claim_ids(result)) <= {1, 2, 4}


def test_short_keyword_is_never_a_confident_answer() -> None:
    index = RumorIndex([Claim("exact", "快递柜有毒")])

    result = index.match("快递柜", DEFAULT_THRESHOLDS)

    assert result.outcome == "suggest"
    assert claim_ids(result) == ["exact"]


def test_short_keyword_found_in_no_claim_is_unknown(index: RumorIndex) -> None:
    assert index.match("火锅", DEFAULT_THRESHOLDS) == MatchResult("unknown", ())


def test_one_shared_word_is_not_enough_for_an_answer() -> None:
    index = RumorIndex([Claim("lockdown", "封城")])

    result = index.match("听说明天要封城了，大家快去买菜", DEFAULT_THRESHOLDS)

    assert result.outcome == "suggest"
    assert claim_ids(result) == ["lockdown"]


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\n\t\u3000", "😷😷👍🏻❤️", "！！？？。。……", "\u200b\u200b", "[哭][哭]", "@某人 "],
)
def test_empty_emoji_or_punctuation_is_unknown(index: RumorIndex, text: str) -> None:
    assert index.match(text, DEFAULT_THRESHOLDS) == MatchResult("unknown", ())


def test_empty_index_knows_nothing() -> None:
    assert RumorIndex().match(FORWARDED_POST, DEFAULT_THRESHOLDS) == MatchResult("unknown", ())


def test_ten_thousand_character_post_is_matched(index: RumorIndex) -> None:
    filler = UNRELATED_FILLER * (10_000 // len(UNRELATED_FILLER) + 1)
    post = (FORWARDED_POST + filler)[:10_000]

    result = index.match(post, DEFAULT_THRESHOLDS)

    assert len(post) == 10_000
    assert result.outcome == "answer"
    assert result.candidates[0].claim_id == 3


def test_ten_thousand_characters_of_unrelated_text_are_not_answered(index: RumorIndex) -> None:
    filler = UNRELATED_FILLER * (10_000 // len(UNRELATED_FILLER) + 1)

    result = index.match(filler[:10_000], DEFAULT_THRESHOLDS)

    assert result.outcome != "answer"


def test_claim_beyond_the_read_budget_is_not_seen(index: RumorIndex) -> None:
    filler = UNRELATED_FILLER * (2 * MAX_MESSAGE_CHARS // len(UNRELATED_FILLER))

    result = index.match(filler + FORWARDED_POST, DEFAULT_THRESHOLDS)

    assert 3 not in claim_ids(result)


def test_added_claim_is_matched_and_removed_claim_no_longer() -> None:
    index = RumorIndex(CLAIMS[:2])
    assert index.match(FORWARDED_POST, DEFAULT_THRESHOLDS).outcome == "unknown"

    index.add(CLAIMS[2])
    answered = index.match(FORWARDED_POST, DEFAULT_THRESHOLDS)
    assert answered.outcome == "answer"
    assert answered.candidates[0].claim_id == 3
    assert 3 in index

    index.remove(3)
    after = index.match(FORWARDED_POST, DEFAULT_THRESHOLDS)
    assert 3 not in claim_ids(after)
    assert after.outcome == "unknown"
    assert 3 not in index
    assert len(index) == 2
    assert index.match("超市", DEFAULT_THRESHOLDS) == MatchResult("unknown", ())


def test_removing_an_unknown_claim_changes_nothing(index: RumorIndex) -> None:
    before = index.match(FORWARDED_POST, DEFAULT_THRESHOLDS)

    index.remove("no-such-claim")

    assert len(index) == len(CLAIMS)
    assert index.match(FORWARDED_POST, DEFAULT_THRESHOLDS) == before


def test_adding_a_claim_with_the_same_id_replaces_it() -> None:
    index = RumorIndex([Claim(7, "喝高度白酒可以预防新冠病毒感染")])

    index.add(Claim(7, "每天吃生大蒜能够预防感染"))

    assert len(index) == 1
    assert index.match("白酒", DEFAULT_THRESHOLDS).outcome == "unknown"
    assert claim_ids(index.match("大蒜", DEFAULT_THRESHOLDS)) == [7]


def test_removal_leaves_other_claims_sharing_its_words_intact() -> None:
    index = RumorIndex(
        [Claim("a", "用淡盐水漱口可以杀死喉咙里的病毒"), Claim("b", "淡盐水漱口能治愈肺炎")]
    )

    index.remove("b")

    result = index.match("网传用淡盐水漱口可以杀死喉咙里的病毒，大家试试", DEFAULT_THRESHOLDS)
    assert result.outcome == "answer"
    assert claim_ids(result) == ["a"]


def test_default_thresholds_order() -> None:
    assert 0 < DEFAULT_THRESHOLDS.suggest < DEFAULT_THRESHOLDS.answer <= 1
    assert DEFAULT_THRESHOLDS.max_suggestions >= 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＡＢＣ１２３，ｎ９５口罩", "abc123,n95口罩"),
        ("详见 https://example.com/a?b=1 和 www.example.org/x 。", "详见和。"),
        ("据@社区网格员小王 通知：明天停水", "据通知:明天停水"),
        ("#疫情防控# 小区封闭管理", "疫情防控小区封闭管理"),
        ("＃小区通知＃注意", "小区通知注意"),
        ("大家😷戴好口罩👍🏻！[哭][捂脸]", "大家戴好口罩!"),
        ("零\u200b宽\ufeff字符", "零宽字符"),
        ("  多个   空格\n\t换行  ", "多个空格换行"),
        ("keep  english   words", "keep english words"),
        ("俄羅斯放出來500隻獅子，確保人們在家隔離", "俄罗斯放出来500只狮子,确保人们在家隔离"),
        ("", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalized_forms_match_alike() -> None:
    index = RumorIndex([Claim("fw", "ｎ９５口罩可以重复使用十次以上")])

    result = index.match("听说 N95 口罩 可以 重复使用 十次以上 ？😷 #防疫#", DEFAULT_THRESHOLDS)

    assert result.outcome == "answer"
    assert claim_ids(result) == ["fw"]


def test_traditional_script_forward_matches_a_simplified_claim() -> None:
    index = RumorIndex(
        [
            Claim("hospitals", "美国24小时内建成180座野战医院，遍布全美各地"),
            Claim("other", "喝白酒可以预防新冠病毒"),
        ]
    )

    forward = "聽說美國24小時內建成180座野戰醫院，遍佈全美各地，是真的嗎？"

    result = index.match(forward, DEFAULT_THRESHOLDS)

    assert result.outcome == "answer"
    assert claim_ids(result) == ["hospitals"]


def test_two_short_keywords_suggest_claims_containing_both(index: RumorIndex) -> None:
    result = index.match("盐水 病毒", DEFAULT_THRESHOLDS)

    assert result.outcome == "suggest"
    assert claim_ids(result) == [4]


# Four invented rumors about one place and time: "武汉疫情期间" is what this knowledge base is
# about in general, and says nothing about which rumor a post spreads.
TOPICAL_CLAIMS = (
    Claim("parcel", "武汉疫情期间快递柜会传播病毒"),
    Claim("herb", "武汉疫情期间喝板蓝根能预防病毒"),
    Claim("closed", "武汉疫情期间小区全部封闭不许出门"),
    Claim("shops", "武汉疫情期间超市停业要提前囤菜"),
)
TOPICAL_NEWS = (
    "武汉疫情期间，社区志愿者每天为独居老人送菜上门，街道还组织了心理疏导热线，"
    "居民们表示很暖心，也感谢一线的医护人员。"
)
EVERY_SCORE = Thresholds(answer=1.1, suggest=0.0, max_suggestions=10)


def test_post_sharing_only_the_knowledge_base_topic_scores_at_chance() -> None:
    index = RumorIndex(TOPICAL_CLAIMS)

    result = index.match(TOPICAL_NEWS, EVERY_SCORE)

    # Half of each claim's characters are in the post, but only what every claim says.
    assert result.candidates
    assert max(candidate.score for candidate in result.candidates) < 0.05
    assert index.match(TOPICAL_NEWS, DEFAULT_THRESHOLDS) == MatchResult("unknown", ())


def test_post_carrying_a_whole_topical_claim_is_still_answered_in_full() -> None:
    index = RumorIndex(TOPICAL_CLAIMS)
    post = "转发：" + TOPICAL_NEWS + "还听说武汉疫情期间快递柜会传播病毒，是真的吗？"

    result = index.match(post, DEFAULT_THRESHOLDS)

    assert result.outcome == "answer"
    assert result.candidates[0] == Candidate("parcel", pytest.approx(1.0))


def test_topic_background_follows_additions_and_removals() -> None:
    only_parcel = RumorIndex(TOPICAL_CLAIMS[:1])
    index = RumorIndex(TOPICAL_CLAIMS)
    post = TOPICAL_NEWS + "快递柜"

    before = index.match(post, EVERY_SCORE).candidates
    for claim in TOPICAL_CLAIMS[1:]:
        index.remove(claim.id)
    after = index.match(post, EVERY_SCORE).candidates

    alone = only_parcel.match(post, EVERY_SCORE).candidates
    assert after == alone
    assert alone[0].score > before[0].score


def read_dev_set(name: str) -> list[dict[str, str]]:
    """Rows of one file of the hand-written development set (bench/rumor_dev, see its README)."""
    path = Path(__file__).resolve().parent.parent / "bench" / "rumor_dev" / name
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def dev_index() -> RumorIndex:
    return RumorIndex(Claim(row["id"], row["claim"]) for row in read_dev_set("factchecks.jsonl"))


def test_every_forward_carrying_a_claim_is_answered_with_it(dev_index: RumorIndex) -> None:
    forwards = [row for row in read_dev_set("queries.jsonl") if row["kind"] == "forward"]

    answered = {row["group"]: dev_index.match(row["text"], DEFAULT_THRESHOLDS) for row in forwards}

    assert len(forwards) == 16
    assert {
        group: (result.outcome, claim_ids(result)[:1]) for group, result in answered.items()
    } == {group: ("answer", [group]) for group in answered}


def test_no_true_notice_on_the_same_subjects_is_answered(dev_index: RumorIndex) -> None:
    notices = [row["text"] for row in read_dev_set("negatives.jsonl")]

    outcomes = [dev_index.match(text, DEFAULT_THRESHOLDS).outcome for text in notices]

    assert len(notices) == 48
    assert "answer" not in outcomes
