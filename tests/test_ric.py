"""Rewards-in-context: prompt format and round trip, normalization, preference mapping, random targets,
the rejection-sampling filter and SFT rows (hand-derived values and the reference code's formulas)."""
import numpy as np
import pytest
import torch

from prefopt.errors import ConfigError, DataError
from prefopt.objectives.ric import (ScoreStats, above_quantile, condition_prompt, format_targets, parse_conditioned,
                                    ric_sft_rows, rows_above_quantile, sample_targets, score_stats,
                                    targets_for_preference)

SPLIT = "\n\nAssistant:"


def test_format_rounds_to_one_decimal_without_negative_zero():
    assert format_targets([0.66, -1.24, -0.04]) == "<rm1_score> 0.7 <rm2_score> -1.2 <rm3_score> 0.0"
    assert format_targets([1.0], decimals=2) == "<rm1_score> 1.00"


@pytest.mark.parametrize("prompt, split", [
    ("review of the zenta phone:", ""),
    ("ends with a space ", ""),
    ("\n\nHuman: hi \n\nAssistant:", SPLIT),
    ("no marker at the end", SPLIT),
])
def test_condition_and_parse_round_trip(prompt, split):
    text = condition_prompt(prompt, [0.66, -1.2], response_split=split)
    assert parse_conditioned(text) == (prompt, (0.7, -1.2))


def test_condition_prompt_text_by_hand_and_as_the_reference():
    assert condition_prompt("review of the zenta phone:", [0.7, -1.2]) == \
        "review of the zenta phone: <rm1_score> 0.7 <rm2_score> -1.2"
    # Reference: YangRui2015/RiC @ aee53a6, ric/prepare_dataset_with_rewards.py lines 166-169 (add_score_assistant):
    #   sample['prompt_with_score'] = sample['prompt'].rstrip('\n\nAssistant:') + ' '
    #   for i in range(instructions.num_rewards):
    #       sample['prompt_with_score'] += instructions.score_splits[i] + ' ' + str(round(sample['score{}'.format(i+1)], 1)) + ' '
    #   sample['prompt_with_score'] += '\n\nAssistant:'
    prompt, scores = "\n\nHuman: is it good? \n\nAssistant:", [0.7, -1.2]
    reference = prompt.rstrip(SPLIT) + " "
    for i, s in enumerate(scores):
        reference += f"<rm{i + 1}_score>" + " " + str(round(s, 1)) + " "
    reference += SPLIT
    assert condition_prompt(prompt, scores, response_split=SPLIT) == reference


def test_conversational_prompts_get_tags_on_the_last_message():
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "rate the phone"}]
    text = condition_prompt(prompt, [1.25, 0.0])
    assert text[-1] == {"role": "user", "content": "rate the phone <rm1_score> 1.2 <rm2_score> 0.0"}
    assert prompt[-1]["content"] == "rate the phone"  # input untouched
    assert parse_conditioned(text) == (prompt, (1.2, 0.0))


def test_bad_prompts_are_refused():
    with pytest.raises(DataError, match="already holds target tags"):
        condition_prompt("x <rm1_score> 1.0", [0.5])
    with pytest.raises(DataError, match="has no <rm1_score> tag"):
        parse_conditioned("plain prompt")
    with pytest.raises(DataError, match="unexpected text after the target tags: 'x'"):
        parse_conditioned("p <rm1_score> 0.5x")


def test_score_stats_by_hand():
    rows = [{"prompt": "p", "completion": "a", "scores": {"info": 1.0, "brev": 0.0}},
            {"prompt": "q", "completion": "b", "scores": {"info": 3.0, "brev": 4.0}}]
    stats = score_stats(rows, ["info", "brev"])
    assert stats.mean == (2.0, 2.0) and stats.std == (1.0, 2.0)  # population std
    assert stats.low == (-1.0, -1.0) and stats.high == (1.0, 1.0)
    assert stats.normalize({"info": 2.5, "brev": 0.0}) == (0.5, -1.0)
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b", "scores": {"info": [1.0, 3.0]}},
             {"prompt": "q", "chosen": "c", "rejected": "d", "scores": {"info": [2.0, 2.0]}}]
    paired = score_stats(pairs, ["info"])  # values 1, 3, 2, 2: mean 2, std sqrt(2/4)
    assert paired.mean == (2.0,) and paired.std[0] == pytest.approx(0.5 ** 0.5)
    with pytest.raises(DataError, match="row 2 has no 'brev' score"):
        score_stats(rows[:1] + [{"prompt": "q", "completion": "c", "scores": {"info": 1.0}}], ["info", "brev"])
    with pytest.raises(DataError, match="'flat' has the same score 0.5 on all 2 responses"):
        score_stats([{"scores": {"flat": 0.5}}, {"scores": {"flat": 0.5}}], ["flat"])


def test_stats_save_and_load(tmp_path):
    stats = ScoreStats(("a", "b"), (0.0, 1.0), (1.0, 2.0), (-2.0, -1.0), (2.0, 3.0))
    assert ScoreStats.load(stats.save(tmp_path / "ric_stats.json")) == stats
    with pytest.raises(DataError, match="lists of different lengths"):
        ScoreStats.from_dict({"objectives": ["a"], "mean": [0, 1], "std": [1], "low": [0], "high": [1]})


STATS = ScoreStats(("a", "b"), (0.0, 0.0), (1.0, 1.0), (-2.0, -1.0), (2.0, 3.0))


def test_preference_mapping_by_hand():
    # linf: the top objective gets high; the other min(m·w, 1)·(high − low) + low.
    assert targets_for_preference([0.7, 0.3], STATS) == (2.0, 1.4)  # 0.6·4 − 1
    assert targets_for_preference([0.5, 0.5], STATS) == (2.0, 3.0)  # tie: first is top; min(1, 1)·4 − 1
    assert targets_for_preference([0.0, 1.0], STATS) == (-2.0, 3.0)
    assert targets_for_preference([0.6, 0.4], STATS, "l2") == (1.3, 1.2)  # 0.832·4 − 2 = 1.33; 0.555·4 − 1 = 1.22
    assert targets_for_preference([0.25, 0.75], STATS, "linear") == (-1.0, 2.0)
    with pytest.raises(ConfigError, match="got 3 weights for 2 objectives"):
        targets_for_preference([0.2, 0.3, 0.5], STATS)
    with pytest.raises(ConfigError, match="expected weights summing to 1"):
        targets_for_preference([0.5, 0.6], STATS)
    with pytest.raises(ConfigError, match="mapping: got 'max'"):
        targets_for_preference([0.5, 0.5], STATS, "max")


def _reference_map(rewards_list, preference, method):
    """YangRui2015/RiC @ aee53a6, ric/utils.py lines 471-491 (map_rewards_from_preference), verbatim."""
    n = len(rewards_list)
    target_rewards = np.zeros(n)
    if method == 'linf':
        max_id = np.argmax(preference)
        target_rewards[max_id] = np.round(np.quantile(rewards_list[max_id], 1), 1)
        for i in range(n):
            if i != max_id:
                low, high = np.quantile(rewards_list[i], 0), np.quantile(rewards_list[i], 1)
                target_rewards[i] = np.round(min(n * preference[i], 1) * (high - low) + low, 1)
    elif method == 'l2':
        for i in range(n):
            low, high = np.quantile(rewards_list[i], 0), np.quantile(rewards_list[i], 1)
            target_rewards[i] = np.round(preference[i] / np.sqrt((np.power(preference, 2).sum())) * (high - low) + low, 1)
    elif method == 'linear':
        for i in range(n):
            low, high = np.quantile(rewards_list[i], 0), np.quantile(rewards_list[i], 1)
            target_rewards[i] = np.round(preference[i] * (high - low) + low, 1)
    return target_rewards


@pytest.mark.parametrize("method", ["linf", "l2", "linear"])
def test_preference_mapping_matches_the_reference(method):
    rng = np.random.default_rng(0)
    data = [rng.normal(size=200), rng.normal(size=200) * 2 + 1, rng.normal(size=200)]
    stats = ScoreStats(("a", "b", "c"), (0.0,) * 3, (1.0,) * 3, tuple(float(d.min()) for d in data),
                       tuple(float(d.max()) for d in data))
    for w in ([0.2, 0.3, 0.5], [0.6, 0.1, 0.3], [1.0, 0.0, 0.0], [0.1, 0.8, 0.1]):
        expected = _reference_map(data, np.array(w), method)
        assert targets_for_preference(w, stats, method) == pytest.approx(tuple(expected))


def test_random_targets_keep_one_objective_and_max_the_others():
    g = torch.Generator().manual_seed(0)
    t = sample_targets(200, STATS, g)
    assert t.shape == (200, 2)
    high = torch.tensor(STATS.high)
    at_high = (t == high).sum(dim=1)
    assert bool((at_high >= 1).all())  # all but the lowest-drawn objective sit at their maximum
    assert bool((t >= torch.tensor(STATS.low)).all()) and bool((t <= high).all())
    assert torch.allclose(t * 10, (t * 10).round(), atol=1e-4)  # one decimal
    assert len(set(t[:, 0].tolist())) > 5 and len(set(t[:, 1].tolist())) > 5  # both objectives get traded off


def test_above_quantile_by_hand_and_as_numpy():
    scores = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    # column 0: sorted (0, 1, 2, 3), q 0.7 at position 2.1 -> 2.1; column 1: (0, 0, 0, 5) -> 0.5
    assert above_quantile(scores, 0.7).tolist() == [False, False, True, True]
    x = np.random.default_rng(1).normal(size=(50, 3))
    thresholds = [np.quantile(x[:, i], 0.7) for i in range(3)]
    expected = [bool(np.any([row[i] >= thresholds[i] for i in range(3)])) for row in x]
    assert above_quantile(torch.tensor(x), 0.7).tolist() == expected
    with pytest.raises(ConfigError, match=r"quantile: got 1.5, expected a value in \[0, 1\]"):
        above_quantile(scores, 1.5)


def test_sft_rows_from_score_labelled_rows():
    stats = ScoreStats(("info", "brev"), (1.0, 0.0), (2.0, 1.0), (-1.0, -1.0), (1.0, 1.0))
    pairs = [{"prompt": "p:", "chosen": "good", "rejected": "bad", "scores": {"info": [3.0, 1.0], "brev": [0.5, -0.25]}}]
    rows = ric_sft_rows(pairs, stats)
    assert rows == [
        {"prompt": "p: <rm1_score> 1.0 <rm2_score> 0.5", "completion": "good", "scores": {"info": 3.0, "brev": 0.5}},
        {"prompt": "p: <rm1_score> 0.0 <rm2_score> -0.2", "completion": "bad", "scores": {"info": 1.0, "brev": -0.25}},
    ]
    single = ric_sft_rows([{"prompt": "q", "completion": "c", "scores": {"info": 0.0, "brev": 1.0}}], stats)
    assert single[0]["prompt"] == "q <rm1_score> -0.5 <rm2_score> 1.0"
    with pytest.raises(DataError, match=r"row 1: RiC scores: missing objective\(s\) \['brev'\]"):
        ric_sft_rows([{"prompt": "q", "completion": "c", "scores": {"info": 0.0}}], stats)
    kept = rows_above_quantile(rows + single, ["info", "brev"], 0.6)
    assert [r["completion"] for r in kept] == ["good", "c"]  # thresholds: info (0, 1, 3) -> 1.4, brev (-0.25, 0.5, 1) -> 0.6
