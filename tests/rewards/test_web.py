"""rewards.web.score: micro-F1 of predicted page changes pooled over the three sections (DESIGN §5)."""

import pytest

from rlvr_world.rewards import web

TRUTH = """New items:
[12] button 'Submit'
[13] text 'Thanks'
Deleted items:
[7] link 'Back'
Updated items:
[3] textbox 'Name' value='Ada'
"""


def test_exact_prediction_scores_one():
    assert web.score(TRUTH, TRUTH) == 1.0


def test_partial_prediction_is_pooled_micro_f1():
    pred = "New items:\n[12] button 'Submit'\n[99] div 'extra'\nDeleted items:\nUpdated items:\n[3] textbox 'Name' value='Ada'\n"
    # matches: 2 ([12], [3]); |pred| = 3; |gt| = 4  ->  2*2 / 7
    assert web.score(pred, TRUTH) == pytest.approx(4 / 7)


def test_a_line_matches_only_within_its_own_section():
    pred = "New items:\n[7] link 'Back'\nDeleted items:\nUpdated items:\n"
    assert web.score(pred, TRUTH) == 0.0


def test_text_before_the_first_header_is_ignored_and_lines_are_stripped_sets():
    pred = ("Let me think. [12] button 'Submit' appears.\n## New items:\n  [12] button 'Submit'  \n[12] button 'Submit'\n"
            "[13] text 'Thanks'\n**Deleted items:**\n[7] link 'Back'\n\nUPDATED ITEMS:\n[3] textbox 'Name' value='Ada'")
    assert web.score(pred, TRUTH) == 1.0


def test_nothing_changed_and_nothing_predicted_is_perfect_but_a_spurious_item_is_not():
    empty = "New items:\nDeleted items:\nUpdated items:\n"
    assert web.score(empty, empty) == 1.0
    assert web.score("New items:\n[1] a\nDeleted items:\nUpdated items:", empty) == 0.0
    assert web.score("I cannot tell.", TRUTH) == 0.0  # no header: no prediction


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="response must be a str"):
        web.score(None, TRUTH)
    with pytest.raises(TypeError, match="ground_truth must be a str"):
        web.score(TRUTH, ["New items:"])


def test_doctests():
    import doctest

    assert doctest.testmod(web).failed == 0
