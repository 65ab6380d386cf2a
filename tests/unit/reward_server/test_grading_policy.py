"""Our verdicts on the contested cases (../shared/data/grading/cases_policy.jsonl) are the ones we documented.

These 24 cases are where grading projects disagree (required </think>, strict ####, letter case, ordered vs
unordered lists, several boxes in the gold) plus one peer test that is simply wrong. The peer's verdict is in the
file; ours is below, and docs/grading-policy.md says why for each id.
"""

from __future__ import annotations

from reward_server.scorers import score
from tests.shared_data import REPO_ROOT, read_shared_jsonl

# id -> our verdict (True = reward 1.0). Keep in step with the table in docs/grading-policy.md.
OUR_POLICY: dict[str, bool] = {
    "p0000": True,  # $ 9 $ across lines is still the answer 9
    "p0001": True,  # \( 9 \) across lines, same
    "p0002": False,  # 1 + 1/e is not 1 - 1/e (the peer test is wrong)
    "p0003": True,  # a lone capital letter is the last-resort answer
    "p0004": True,  # "Answer: c" names option C
    "p0005": True,  # no </think> required
    "p0006": True,  # no \boxed required
    "p0007": False,  # only text after </think> counts; there is no answer there
    "p0008": True,  # no <think> block required
    "p0009": True,  # 0.5 == 1/2
    "p0010": True,  # stray chat-template debris after the box is ignored
    "p0011": True,  # same
    "p0012": True,  # "The answer is 42" counts for GSM8K; "####" is not required
    "p0013": True,  # the last anchored letter wins
    "p0014": True,  # an anchored letter beats a list of options
    "p0015": False,  # "32, 349" is a list of two numbers
    "p0016": False,  # the gold holds a TAB, i.e. "ext{13}", not 13
    "p0017": False,  # boxes separated by prose without a separator are not merged: gold is 2
    "p0018": False,  # boxes joined by "and" are merged: gold is {1, 2, 3}
    "p0019": True,  # same merge: {1, 2, 3} == {1, 2, 3}
    "p0020": True,  # comma lists are unordered sets
    "p0021": True,  # same, and .1 == 0.1
    "p0022": True,  # a response that is only "b" names option B
    "p0023": True,  # gold letters are case-insensitive
}


def test_policy_cases_follow_documented_policy() -> None:
    cases = read_shared_jsonl("grading/cases_policy.jsonl")
    assert {case["id"] for case in cases} == set(OUR_POLICY)
    wrong = []
    for case in cases:
        outcome = score(case["kind"], case["response"], case["ground_truth"])
        if (outcome.reward == 1.0) != OUR_POLICY[case["id"]]:
            wrong.append(f"{case['id']}: policy {OUR_POLICY[case['id']]}, got {outcome}")
    assert not wrong, "\n".join(wrong)


def test_policy_table_is_documented() -> None:
    doc = (REPO_ROOT / "docs" / "grading-policy.md").read_text(encoding="utf-8")
    for case_id, verdict in OUR_POLICY.items():
        row = next((line for line in doc.splitlines() if line.startswith(f"| {case_id} ")), None)
        assert row is not None, f"{case_id} missing from docs/grading-policy.md"
        assert ("| correct |" if verdict else "| incorrect |") in row, f"{case_id}: doc row disagrees with policy"
