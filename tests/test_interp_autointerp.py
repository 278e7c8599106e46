"""Auto-interpretation: prompt formatting, answer parsing (well-formed and malformed), scoring math, latent sampling."""

from __future__ import annotations

import pytest

from chatsae.interp.autointerp import AutointerpConfig, binary_scores, held_out_contexts, sample_latents, summarize
from chatsae.interp.prompts import (
    ParseError,
    fast_prompt,
    format_marked,
    format_with_values,
    parse_binary_list,
    parse_explanation,
    parse_fast,
)
from chatsae.interp.store import Context

VOCAB = {1: "<|im_start|>", 2: "user", 3: "\n", 4: "Hello", 5: " world", 6: "!"}
tok = VOCAB.__getitem__


def ctx(acts, tokens=(1, 2, 3, 4, 5, 6)):
    return Context(list(tokens), list(acts), 0, 0, 0, max(acts))


def test_tokens_are_interleaved_with_scaled_activations():
    c = ctx([0.0, 0.0, 0.0, 2.0, 4.0, 0.1])
    assert format_with_values(c, tok, scale=4.0) == "<|im_start|>(0) user(0) \\n(0) Hello(5)  world(10) !(1)"
    assert format_with_values(c, tok, scale=4.0, show_zero=False) == "<|im_start|> user \\n Hello(5)  world(10) !(1)"
    messages = fast_prompt([c, ctx([0, 0, 0, 0, 5.0, 0])], tok)
    user = messages[-1]["content"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Example 1: <|im_start|>(0) user(0) \\n(0) Hello(4)  world(8) !(1)" in user  # scale = max over examples
    assert "Example 2:" in user and "Example 3:" not in user
    assert "[[S]]" in user and "[[NAME]]" in user and "5: clear pattern with no deviating examples" in user


def test_marked_format_wraps_runs_of_tokens():
    assert format_marked([4, 5, 6, 3], [False, True, True, False], tok) == "Hello<< world!>>\\n"
    assert format_marked([4, 5], [True, True], tok) == "<<Hello world>>"


@pytest.mark.parametrize(
    "answer, score, name",
    [
        ("My final verdict score is: [[4]], feature name is [[greetings]]", 4, "greetings"),
        (
            "Reasoning...\nMy final verdict score is: [[ 5 ]], feature name is [[ Chat template start ]]",
            5,
            "Chat template start",
        ),
        ("score is [[3.0]] and the feature name is [[numbers]]", 3, "numbers"),
        ("[[2]] [[punctuation marks]]", 2, "punctuation marks"),  # no keywords: first numeric, first non-numeric
        ("The example [[1]] is odd. My final verdict score is: [[5]], feature name is [[x]]", 5, "x"),
    ],
)
def test_parse_fast_accepts_well_formed_answers(answer, score, name):
    assert parse_fast(answer) == (score, name)


@pytest.mark.parametrize(
    "answer",
    [
        "I think this latent is about greetings, score 4.",  # no brackets at all
        "My final verdict score is: [[7]], feature name is [[x]]",  # out of range
        "My final verdict score is: [[3.5]], feature name is [[x]]",  # not an integer
        "My final verdict score is: [[four]], feature name is [[x]]",  # not a number
        "My final verdict score is: [[4]]",  # no name
        "My final verdict score is: [[S]], feature name is [[NAME]]",  # the template echoed back
        "",
    ],
)
def test_parse_fast_rejects_malformed_answers(answer):
    with pytest.raises(ParseError):
        parse_fast(answer)


def test_parse_explanation_and_binary_lists():
    assert parse_explanation("It fires on greetings. [[the word 'Hello']]") == "the word 'Hello'"
    with pytest.raises(ParseError):
        parse_explanation("no brackets here")
    with pytest.raises(ParseError, match="example"):  # a small judge parroting the prompt's example
        parse_explanation("The latent detects: [[The word 'the' after a comma]]")
    assert parse_binary_list("Decisions: [[1, 0, 1]]", 3) == [1, 0, 1]
    assert parse_binary_list("e.g. [[0, 1]] ... final: [[1 1]]", 2) == [1, 1]  # the last list wins
    with pytest.raises(ParseError, match="expected 3"):
        parse_binary_list("[[1, 0]]", 3)
    with pytest.raises(ParseError):
        parse_binary_list("[[yes, no, yes]]", 3)


def test_binary_scores_match_hand_computation():
    # labels: 4 positives, 4 negatives; predictions with one unparsed item
    preds = [1, 1, 0, None, 1, 0, 0, 0]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    s = binary_scores(preds, labels)
    assert (s.tp, s.fp, s.tn, s.fn, s.n_unparsed) == (2, 1, 3, 1, 1)
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == pytest.approx(2 / 3)
    assert s.specificity == pytest.approx(3 / 4)
    assert s.balanced_accuracy == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert s.accuracy == pytest.approx(5 / 7)
    assert s.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    empty = binary_scores([0, 0], [0, 0])
    assert empty.precision is None and empty.recall is None and empty.balanced_accuracy is None
    assert empty.specificity == 1.0
    with pytest.raises(ValueError):
        binary_scores([1], [1, 0])


def test_summary_distribution_and_top_range_share():
    latents = {
        "1": {"fast": {"status": "ok", "score": 5}},
        "2": {"fast": {"status": "ok", "score": 4}},
        "3": {"fast": {"status": "ok", "score": 2}},
        "4": {"fast": {"status": "unparseable", "score": None}},
        "5": {
            "fast": {"status": "ok", "score": 4},
            "detection": {
                "status": "ok",
                "tp": 3,
                "fp": 1,
                "tn": 2,
                "fn": 0,
                "balanced_accuracy": 5 / 6,
                "precision": 0.75,
                "recall": 1.0,
                "f1": 6 / 7,
            },
        },
        "6": {
            "detection": {
                "status": "ok",
                "tp": 1,
                "fp": 0,
                "tn": 3,
                "fn": 2,
                "balanced_accuracy": 2 / 3,
                "precision": 1.0,
                "recall": 1 / 3,
                "f1": 0.5,
            }
        },
    }
    s = summarize(latents)
    fast = s["fast"]
    assert fast["counts"] == {"1": 0, "2": 1, "3": 0, "4": 2, "5": 1}
    assert (fast["n_latents"], fast["n_scored"], fast["n_unparseable"]) == (5, 4, 1)
    assert fast["top_range_share"] == pytest.approx(3 / 4)
    assert fast["top_range_share_of_all"] == pytest.approx(3 / 5)
    assert fast["mean_score"] == pytest.approx(15 / 4)
    det = s["detection"]
    assert det["mean_balanced_accuracy"] == pytest.approx((5 / 6 + 2 / 3) / 2)
    pooled = det["pooled"]  # counts added over latents: tp 4, fp 1, tn 5, fn 2
    assert pooled["precision"] == pytest.approx(4 / 5) and pooled["recall"] == pytest.approx(4 / 6)


def test_latent_sampling_and_held_out_test_sets(interp_features):
    data = interp_features[0]
    fired = set(data.fired().tolist())
    a = sample_latents(data, AutointerpConfig(n_latents=5, seed=1))
    assert len(a) == 5 and set(a) <= fired and a == sample_latents(data, AutointerpConfig(n_latents=5, seed=1))
    assert a != sample_latents(data, AutointerpConfig(n_latents=5, seed=2))
    assert sample_latents(data, AutointerpConfig(latents=[3, 1])) == [3, 1]
    with pytest.raises(ValueError, match="out of range"):
        sample_latents(data, AutointerpConfig(latents=[data.d_sae]))
    cfg = AutointerpConfig(n_examples=3, n_test=3)
    for j in a:
        pos, neg = held_out_contexts(data, j, cfg)
        top_samples = {c.sample for c in data.contexts(j, "top")[:3]}
        assert not top_samples & {c.sample for c in pos}  # held out from the explanation's examples
        assert len(pos) <= 3 and all(c.max_act > 0 for c in pos) and all(max(c.acts) == 0 for c in neg)
        assert [c.max_act for c in pos] == sorted((c.max_act for c in pos), reverse=True)
    with pytest.raises(ValueError, match="unknown protocol"):
        AutointerpConfig(protocol="fast,simulation").protocols()
    assert AutointerpConfig(protocol="all").protocols() == ["fast", "detection", "fuzzing"]
