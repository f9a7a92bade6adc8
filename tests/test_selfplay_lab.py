"""The reviews_rps lab task (intransitive gold judge, Nash mixture, exploitability) and preference sources."""
import math

import pytest
import torch

from prefopt.errors import ConfigError
from prefopt.rollout.preferences import (
    NamedJudge, RewardJudge, build_judge, cross_win_rates, exploitability, function_judge, win_rate,
    win_rate_matrix,
)
from prefopt.rollout.scorers import RewardError
from prefopt.tasks import get_task
from prefopt.tasks.reviews_rps import nash_style_mixture, split_style, style_payoffs

PROMPT = "review of the zenta phone:"
H, O, F = " honestly , the battery is great .", " overall , the battery is great .", " frankly , the battery is great ."


def test_style_is_read_from_the_opener_and_does_not_change_the_reviews_scores():
    task, reviews = get_task("reviews_rps"), get_task("reviews")
    assert split_style(" frankly , the screen is awful .") == ("frankly", " the screen is awful .")
    assert split_style(" the screen is awful .")[0] == "none"
    assert task.score(PROMPT, " overall , the battery is great . i love it .") == \
        reviews.score(PROMPT, " the battery is great . i love it .")


def test_gold_judge_hand_values():
    task = get_task("reviews_rps", intransitivity=1.0, style_weight=0.5, quality_weight=0.5)
    # pure cycle, equal quality (battery only, q = 1/4): ½ + ½·0.5·1 = 0.75 each way round the cycle
    assert task.judge(PROMPT, H, O) == pytest.approx(0.75)
    assert task.judge(PROMPT, O, F) == pytest.approx(0.75)
    assert task.judge(PROMPT, F, H) == pytest.approx(0.75)
    # same style, quality 2/4 vs 1/4: ½ + ½·0.5·0.25
    two = " honestly , the battery is great . the screen is bad ."
    assert task.judge(PROMPT, two, H) == pytest.approx(0.5625)
    # no opener loses to a styled response by 1: ½ - ½·0.5
    assert task.judge(PROMPT, " the battery is great .", H) == pytest.approx(0.25)
    # λ = 0.4: M[2, 0] = 2λ - 1 = -0.2, so honestly beats frankly: ½ + ½·0.5·0.2
    transitive = get_task("reviews_rps", intransitivity=0.4)
    assert transitive.judge(PROMPT, H, F) == pytest.approx(0.55)
    assert transitive.judge(PROMPT, H, O) == pytest.approx(0.5 + 0.25 * 0.7)


def test_judge_is_intransitive_above_half_and_complementary():
    corpus = get_task("reviews_rps").sft_corpus(40, seed=3)
    for lam in (0.6, 1.0):
        task = get_task("reviews_rps", intransitivity=lam)
        # a strict cycle: no scalar reward ranks H > O > F > H
        assert task.judge(PROMPT, H, O) > 0.5 and task.judge(PROMPT, O, F) > 0.5 and task.judge(PROMPT, F, H) > 0.5
    task = get_task("reviews_rps", intransitivity=0.0)  # exactly a scalar utility: transitive
    assert task.judge(PROMPT, H, O) > 0.5 and task.judge(PROMPT, O, F) > 0.5 and task.judge(PROMPT, H, F) > 0.5
    for (p, a), (_, b) in zip(corpus, corpus[1:]):
        assert task.judge(p, a, b) + task.judge(p, b, a) == pytest.approx(1.0)
        assert 0.0 <= task.judge(p, a, b) <= 1.0


def fictitious_play(payoffs, rounds=20000):
    """Symmetric zero-sum game solved numerically: empirical frequencies of best responses."""
    n = len(payoffs)
    counts = [0] * n
    counts[-1] = 1
    for _ in range(rounds):
        total = sum(counts)
        advantage = [sum(payoffs[j][i] * counts[i] / total for i in range(n)) for j in range(n)]
        counts[max(range(n), key=advantage.__getitem__)] += 1
    total = sum(counts)
    return [c / total for c in counts]


@pytest.mark.parametrize("lam", [1.0, 0.9, 0.75, 0.6, 0.3])
def test_nash_mixture_matches_the_numerically_solved_game(lam):
    payoffs = style_payoffs(lam)
    assert all(payoffs[i][j] == -payoffs[j][i] for i in range(4) for j in range(4))
    nash = list(nash_style_mixture(lam)) + [0.0]
    # exact equilibrium: no pure style (nor "none") beats p* (the game's value is 0)
    assert max(sum(payoffs[j][i] * nash[i] for i in range(4)) for j in range(4)) < 1e-12
    assert fictitious_play(payoffs) == pytest.approx(nash, abs=0.02)
    if lam == 1.0:
        assert nash[:3] == pytest.approx([1 / 3] * 3)


def test_exploitability_exact_panel_and_nash():
    task = get_task("reviews_rps", intransitivity=0.75)
    prompts = task.prompts("eval", 6, seed=1)
    # a Nash policy: styles in proportion p* = (7/18, 4/18, 7/18), every aspect mentioned
    counts = [round(18 * p) for p in nash_style_mixture(0.75)]
    assert counts == [7, 4, 7]
    styles = [s for s, c in zip(("honestly", "overall", "frankly"), counts) for _ in range(c)]
    nash_rows = [task.best_response(p, s) for p in prompts for s in styles]
    row_prompts = [p for p in prompts for _ in styles]
    assert task.exploitability(row_prompts, nash_rows) == pytest.approx(0.5)
    panel = task.panel(prompts)
    est = exploitability(task.judge, prompts, nash_rows, panel)
    assert est.value == pytest.approx(0.5) and set(est.win_rates) == {"honestly", "overall", "frankly"}

    # the SFT distribution (style shares 0.6/0.3/0.1, low quality) is exploitable; the panel finds it exactly
    corpus = [task.sft_corpus(1, seed=s)[0][1] for s in range(60)]
    sft_rows = [corpus[(i * 10 + j) % 60] for i in range(len(prompts)) for j in range(10)]
    sft_prompts = [p for p in prompts for _ in range(10)]
    exact = task.exploitability(sft_prompts, sft_rows)
    est = exploitability(task.judge, prompts, sft_rows, panel)
    assert exact > 0.6 and est.value == pytest.approx(exact)
    dist = task.style_distribution(sft_rows)
    assert est.best == ("honestly", "overall", "frankly")[max(range(3), key=task.style_advantages(dist).__getitem__)]


def test_task_options_are_checked():
    with pytest.raises(ConfigError, match="intransitivity"):
        get_task("reviews_rps", intransitivity=1.5)
    with pytest.raises(ConfigError, match="sum <= 1"):
        get_task("reviews_rps", style_weight=0.7, quality_weight=0.6)
    with pytest.raises(ConfigError, match="style_probs"):
        get_task("reviews_rps", style_probs=[0.5, 0.5])
    with pytest.raises(ConfigError, match="quality"):
        get_task("reviews_rps", quality="length")
    task = get_task("reviews_rps", quality="positivity", style_probs=[0.0, 0.0, 0.0])
    assert task.default_objective == "positivity"
    assert all(split_style(r)[0] == "none" for _, r in task.sft_corpus(20))
    assert task.quality_of(PROMPT, task.best_response(PROMPT, "overall")) == 1.0


# --------------------------------------------------------------------------- preference sources


def test_win_rate_matrix_from_the_lab_judge():
    task = get_task("reviews_rps")
    judge = build_judge("lab", task=task)
    w = win_rate_matrix(judge, [PROMPT, PROMPT], [H, O, F, H, H, " the battery is great ."])
    assert w.shape == (2, 3, 3)
    assert torch.diagonal(w, dim1=1, dim2=2).eq(0.5).all()
    assert w[0].flatten().tolist() == pytest.approx([0.5, 0.75, 0.25, 0.25, 0.5, 0.75, 0.75, 0.25, 0.5])
    assert w[1, 0, 2].item() == pytest.approx(0.75) and w[1, 0, 1].item() == 0.5
    assert torch.allclose(w + w.transpose(1, 2), torch.ones_like(w))


def test_bt_judge_matches_judge_from_reward_and_scores_each_sample_once():
    calls = []

    def reward(prompts, responses):
        calls.append(len(responses))
        return [float(len(r)) for r in responses]

    judge = RewardJudge(reward, "bt:len", temperature=2.0)
    texts = ["a", "abc", "abcdef"]
    w = win_rate_matrix(judge, ["p"], texts, dtype=torch.float64)
    assert calls == [6]  # one reward call for the prompt's block
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert w[0, 0, 2].item() == pytest.approx(sig((1 - 6) / 2))
    assert judge("p", "abc", "a") == pytest.approx(sig(1.0))  # the pairwise call agrees
    gold = build_judge("bt:gold:informativeness", task=get_task("reviews"), options={"temperature": 0.5})
    two = " the battery is great . the screen is bad ."
    assert gold(PROMPT, two, " the battery is great .") == pytest.approx(sig(0.25 / 0.5))
    with pytest.raises(ConfigError, match="one"):
        build_judge("bt:gold", task=get_task("reviews"))
    with pytest.raises(ConfigError, match="temperature"):
        RewardJudge(reward, "bt:len", temperature=0.0)


def test_function_judge_and_both_orders():
    def first_wins(prompt, a, b):  # a judge with pure position bias
        return 0.9

    j = function_judge(first_wins)
    assert j.name == "first_wins"
    once = win_rate_matrix(j, ["p"], ["x", "y"])
    both = win_rate_matrix(j, ["p"], ["x", "y"], both_orders=True)
    assert once[0, 0, 1].item() == pytest.approx(0.9) and both[0, 0, 1].item() == pytest.approx(0.5)
    by_name = build_judge("tests.online_reward_fns:longer_wins")
    assert isinstance(by_name, NamedJudge) and by_name.name == "tests.online_reward_fns:longer_wins"
    assert win_rate_matrix(by_name, ["p"], ["ab", "a"])[0, 0, 1].item() == 1.0


@pytest.mark.parametrize("value, shown", [(1.5, "1.5"), (float("nan"), "nan"), (-0.1, "-0.1")])
def test_bad_judge_values_name_the_judge_and_the_pair(value, shown):
    def broken(prompt, a, b):
        return value if b == "z" else 0.5

    with pytest.raises(RewardError, match=rf"judge 'broken': returned {shown} on prompt 1, pair \(0, 2\)"):
        win_rate_matrix(broken, ["p0", "p1"], ["x", "y", "w", "x", "y", "z"])


def test_judge_exceptions_and_too_few_samples():
    def raises(prompt, a, b):
        raise KeyError("style")

    with pytest.raises(RewardError, match=r"judge 'raises': KeyError.*pair \(0, 1\)"):
        win_rate_matrix(raises, ["p"], ["x", "y"])
    with pytest.raises(ValueError, match="at least 2 samples per prompt, got 1"):
        win_rate_matrix(lambda p, a, b: 0.5, ["p", "q"], ["x", "y"])
    with pytest.raises(ValueError, match="same number of samples"):
        win_rate_matrix(lambda p, a, b: 0.5, ["p", "q"], ["x", "y", "z"])
    with pytest.raises(ConfigError, match="no gold pairwise judge"):
        build_judge("lab", task=get_task("reviews"))


def test_win_rate_between_policies():
    task = get_task("reviews_rps")
    prompts = [PROMPT, "review of the korvo laptop:"]
    a = [H, H, " honestly , the battery is great .", " honestly , the keyboard is good ."]
    b = [O, O, O, O]
    rates = cross_win_rates(task.judge, prompts, a, b)
    assert rates.shape == (2, 2, 2)
    # every response mentions one aspect of its product (phone and laptop both have a battery): q = 1/4
    # throughout, so only the style counts: honestly beats overall, ½ + ½·0.5·1 = 0.75
    assert rates.flatten().tolist() == pytest.approx([0.75] * 8)
    wr = win_rate(task.judge, prompts, a, b)
    assert wr.mean == pytest.approx(0.75) and wr.pairs == 8 and wr.stderr == pytest.approx(0.0)
    assert win_rate(task.judge, prompts, b, a).mean == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="panel is empty"):
        exploitability(task.judge, prompts, a, {})
