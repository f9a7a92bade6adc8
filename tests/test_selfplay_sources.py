"""Self-play pieces without a training run: pair selection from win-rate matrices, the geometric
mixture sampler, the extragradient loop hook (hand-computed SGD / Adam steps), preference sources
(lab:noisy / lab:adversarial, the pairwise preference model) and the Hedge labeller."""
import math
import random

import pytest
import torch

from prefopt.errors import ConfigError
from prefopt.rollout.preferences import (PairwiseModelJudge, build_judge, pair_text, pairwise_model_rows,
                                         win_rate_matrix)
from prefopt.tasks import get_task
from prefopt.train.algorithms.base import StepLoss
from prefopt.train.config import LoopConfig
from prefopt.train.extragradient import ExtragradientHook
from prefopt.train.loop import _one_step
from prefopt.train.recipe import LossTerm, Part, Recipe, Source
from prefopt.train.sources.selfplay import GeometricMixture, _adjacent_pairs, _ranked_pairs


def _w(rows):
    m = torch.tensor(rows, dtype=torch.float64).unsqueeze(0)
    assert torch.allclose(m + m.transpose(1, 2), torch.ones_like(m))
    return m


# --------------------------------------------------------------------------- pair selection


def test_inpo_pairs_are_adjacent_samples_ordered_by_the_judge_ties_dropped():
    w = _w([[0.5, 0.2, 0.9, 0.5],
            [0.8, 0.5, 0.6, 0.4],
            [0.1, 0.4, 0.5, 0.5],
            [0.5, 0.6, 0.5, 0.5]])
    sel = _adjacent_pairs(w)  # pairs (0, 1): 1 wins with 0.8; (2, 3): P = ½, dropped
    assert sel.chosen.tolist() == [1] and sel.rejected.tolist() == [0]
    assert sel.chosen_score.tolist() == pytest.approx([0.8]) and sel.rejected_score.tolist() == pytest.approx([0.2])


def test_ranked_pairs_keep_only_a_positive_gap_at_least_the_margin():
    w = torch.cat([_w([[0.5, 0.9, 0.7], [0.1, 0.5, 0.6], [0.3, 0.4, 0.5]]),
                   _w([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])])
    # prompt 0: P̂ = (0.7, 0.4, 0.4): best 0, worst the last of the tie (stable order), gap 0.3
    sel = _ranked_pairs(w, margin=0.0, pairs_per_prompt=1)
    assert sel.prompt.tolist() == [0] and sel.chosen.tolist() == [0] and sel.rejected.tolist() == [2]
    assert _ranked_pairs(w, margin=0.31, pairs_per_prompt=1).prompt.numel() == 0


# --------------------------------------------------------------------------- geometric mixture


def test_geometric_mixture_samples_equal_the_policy_at_0_and_the_reference_at_1(reviews_tokenizer):
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model
    from prefopt.rollout.engine import SamplingConfig, generate

    tok = reviews_tokenizer
    torch.manual_seed(0)
    policy = load_model(ModelConfig(name_or_path="tiny:llama-1m"), tok)
    torch.manual_seed(1)
    ref = load_model(ModelConfig(name_or_path="tiny:llama-1m"), tok)
    prompts = [tok("review of the zenta phone:")["input_ids"], tok("review of the orbo lamp:")["input_ids"]]
    cfg = SamplingConfig(max_new_tokens=6, num_samples=2)
    kw = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, seeds=[3, 4])
    ref.train()  # the mixture's eval()/train() must leave the reference's mode alone
    for coef, alone in ((0.0, policy), (1.0, ref)):
        mixed = generate(GeometricMixture(policy, ref, coef), prompts, cfg, **kw)
        plain = generate(alone, prompts, cfg, **kw)
        assert torch.equal(mixed.response_ids, plain.response_ids)
        assert torch.allclose(mixed.logprobs, plain.logprobs, atol=1e-5)
    # in between: the per-token distribution is log_softmax((1 − α)·policy + α·ref)
    ids = torch.tensor([prompts[0]])
    out = GeometricMixture(policy, ref, 0.3)(input_ids=ids, attention_mask=torch.ones_like(ids))
    expected = torch.log_softmax(0.7 * policy(input_ids=ids).logits + 0.3 * ref(input_ids=ids).logits, -1)
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert ref.training


# --------------------------------------------------------------------------- extragradient hook


class _ParamsSource(Source):
    """The 'sample' is the current parameter vector: batches depend on where the model is."""

    kinds = ("toy",)

    def __init__(self):
        self.seen = []

    def next_batches(self, model, num_micro):
        x = model.weight.detach().clone().reshape(-1)
        self.seen.append(x)
        return [{"toy": x}]


class _SquareTerm(LossTerm):
    kind, name = "toy", "toy"

    def units(self, batch):
        return 1.0

    def loss(self, model, batch):
        return StepLoss((model.weight.reshape(-1) @ batch - 1.0) ** 2, {}, 1)


def _grad(theta, x):
    return 2 * (theta @ x - 1.0) * x


def _toy(hook):
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.3, -0.2]]))
    source = _ParamsSource()
    recipe = Recipe([Part(source, [(_SquareTerm(), 1.0)])], name="toy")
    if hook is not None:
        recipe.step_hook = hook
    return model, recipe, source


def _run(model, recipe, optimizer, steps=1):
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    cfg = LoopConfig(max_grad_norm=0.0, progress=False)
    params = [p for p in model.parameters() if p.requires_grad]
    return [_one_step(model, recipe, optimizer, sched, params, cfg, s + 1) for s in range(steps)]


def test_extragradient_step_equals_the_hand_computed_sgd_update():
    lr = 0.1
    model, recipe, source = _toy(ExtragradientHook())
    rec = _run(model, recipe, torch.optim.SGD(model.parameters(), lr=lr))[0]
    t0 = torch.tensor([0.3, -0.2])
    half = t0 - lr * _grad(t0, t0)  # look-ahead: samples at θ_t, gradient at θ_t
    expected = t0 - lr * _grad(t0, half)  # real: samples at θ_{t+½}, gradient at the restored θ_t
    assert torch.allclose(source.seen[1], half)
    assert torch.allclose(model.weight.detach().reshape(-1), expected, atol=1e-7)
    assert rec["lookahead/loss"] == pytest.approx(float((t0 @ t0 - 1) ** 2))
    assert rec["loss"] == pytest.approx(float((t0 @ half - 1) ** 2))


def test_extragradient_restores_the_optimizer_state_and_plain_hook_is_one_pass():
    model, recipe, _ = _toy(ExtragradientHook())
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    _run(model, recipe, opt)
    state = opt.state[model.weight]
    assert int(state["step"]) == 1  # the look-ahead's Adam update was undone
    t0 = torch.tensor([0.3, -0.2])
    g = _grad(t0, t0 - 0.05 * torch.sign(_grad(t0, t0)))  # Adam's first step moves each coordinate by lr
    assert torch.allclose(state["exp_avg"].reshape(-1), 0.1 * g, atol=1e-6)
    # without a hook: one pass per loop step, samples at θ_t
    plain, recipe2, source2 = _toy(None)
    _run(plain, recipe2, torch.optim.SGD(plain.parameters(), lr=0.1), steps=2)
    assert len(source2.seen) == 2


def test_extragradient_abort_puts_back_the_last_completed_step():
    model, recipe, _ = _toy(ExtragradientHook())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hook = recipe.step_hook
    before = model.weight.detach().clone()
    hook.before_forward("lookahead", model, opt)
    model.weight.grad = torch.ones_like(model.weight)
    opt.step()
    assert not torch.equal(model.weight, before)
    hook.abort(model, opt)
    assert torch.equal(model.weight.detach(), before) and not opt.state


# --------------------------------------------------------------------------- preference sources


def test_lab_noisy_and_adversarial_judges():
    task = get_task("reviews_rps")
    p = task.prompts("train", 1, seed=0)[0]
    a, b = task.best_response(p, "honestly"), task.best_response(p, "overall")
    gold = task.judge(p, a, b)
    assert build_judge("lab:adversarial", task=task)(p, a, b) == pytest.approx(1 - gold)
    noisy = build_judge("lab:noisy", task=task, options={"noise": 0.5})
    value = noisy(p, a, b)
    assert value == noisy(p, a, b) and abs(value - 0.5 * gold) <= 0.5  # reproducible, (1-ν)·gold + ν·U
    assert build_judge("lab:noisy", task=task, options={"noise": 0.0})(p, a, b) == pytest.approx(gold)
    with pytest.raises(ConfigError, match=r"judge 'lab:adversarial': unknown options \['noise'\]"):
        build_judge("lab:adversarial", task=task, options={"noise": 0.1})
    with pytest.raises(ConfigError, match="noise must be in"):
        build_judge("lab:noisy", task=task, options={"noise": 2.0})


def test_pairwise_model_rows_and_judge_from_a_pair_scorer():
    rows = pairwise_model_rows([{"prompt": "x", "chosen": " good", "rejected": " bad"}])
    assert rows == [{"prompt": "x", "chosen": pair_text(" good", " bad"), "rejected": pair_text(" bad", " good")}]
    with pytest.raises(ConfigError, match="row 0 has no rejected"):
        pairwise_model_rows([{"prompt": "x", "chosen": "a"}])

    def scorer(prompts, texts):  # s(a, b) = len(a) − 2·len(b): P(a ≻ b) = σ(3·(len a − len b))
        out = []
        for t in texts:
            a, b = t[len(" [A]"):].split(" [B]")
            out.append(len(a) - 2.0 * len(b))
        return out

    judge = PairwiseModelJudge(scorer, "pm")
    assert judge("x", "aa", "a") == pytest.approx(1 / (1 + math.exp(-3)))
    w = win_rate_matrix(judge, ["x"], ["a", "aaa", "aa"], dtype=torch.float64)
    assert torch.allclose(w + w.transpose(1, 2), torch.ones_like(w)) and torch.all(w.diagonal(dim1=1, dim2=2) == 0.5)
    assert w[0, 1, 0] == pytest.approx(1 / (1 + math.exp(-6)))


def test_pairwise_model_judge_loads_a_saved_reward_model(reviews_tokenizer, tmp_path):
    from prefopt.models.config import ModelConfig
    from prefopt.models.reward import build_reward_model

    model = build_reward_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer, seed=1,
                               meta={"objective": "preference"})
    model.save_pretrained(tmp_path / "pm")
    reviews_tokenizer.save_pretrained(tmp_path / "pm")
    judge = build_judge(f"pairwise_model:{tmp_path / 'pm'}")
    p, a, b = "review of the zenta phone:", " i love it .", " the battery is bad ."
    assert 0.0 < judge(p, a, b) < 1.0
    assert judge(p, a, b) + judge(p, b, a) == pytest.approx(1.0, abs=1e-6)


def test_judged_pairs_follow_the_gold_judge():
    task = get_task("reviews_rps")
    rows = task.judged_pairs(400, seed=0)
    agree = sum(task.judge(r["prompt"], r["chosen"], r["rejected"]) >= 0.5 for r in rows) / len(rows)
    assert len(rows) == 400 and agree > 0.6  # labels are draws from P, so mostly on the gold side


# --------------------------------------------------------------------------- Hedge labeller


def _stream(n, seed=0):
    rng = random.Random(seed)
    return [(f"p{i}", f"a{rng.random()}", f"b{rng.random()}") for i in range(n)]


def _gold(p, a, b):
    return 0.9 if a > b else 0.1


def test_hedge_labeller_learns_the_good_judge_and_keeps_its_regret_bound():
    from prefopt.objectives.hedge import Hedge, HedgeLabeller

    experts = [("good", _gold), ("adversarial", lambda p, a, b: 1 - _gold(p, a, b)), ("coin", lambda p, a, b: 0.5)]
    from prefopt.rollout.preferences import NamedJudge
    judges = [NamedJudge(fn, name) for name, fn in experts]
    hedge = Hedge([j.name for j in judges], horizon=200)
    labeller = HedgeLabeller(judges, _gold, hedge, feedback=0.5, seed=3)
    for p, a, b in _stream(400):
        labeller(p, a, b)
    m = labeller.metrics()
    assert m["hedge/weight/good"] > 0.95 and 150 < m["hedge/labelled"] < 250
    assert m["hedge/regret"] <= m["hedge/regret_bound"] and m["hedge/gold_agreement"] > 0.9
    # state round trip: a fresh labeller continues identically
    fresh = HedgeLabeller(judges, _gold, Hedge([j.name for j in judges], horizon=200), feedback=0.5, seed=3)
    fresh.load_state_dict(labeller.state_dict())
    more = _stream(20, seed=1)
    assert [labeller(*x) for x in more] == [fresh(*x) for x in more]


def test_hedge_labeller_bad_input():
    from prefopt.objectives.hedge import Hedge, HedgeLabeller
    from prefopt.rollout.preferences import NamedJudge
    from prefopt.rollout.scorers import RewardError

    with pytest.raises(ConfigError, match="at least 2 experts"):
        Hedge(["only"])
    with pytest.raises(ConfigError, match=r"hedge.eta: got -1"):
        Hedge(["a", "b"], eta=-1)
    judges = [NamedJudge(_gold, "good"), NamedJudge(lambda p, a, b: 1.5, "broken")]
    labeller = HedgeLabeller(judges, _gold, Hedge(["good", "broken"]), feedback=1.0)
    with pytest.raises(RewardError, match=r"judge 'broken': returned 1.5 on pair 0"):
        labeller("p", "a", "b")
    assert labeller.hedge.rounds == 0
