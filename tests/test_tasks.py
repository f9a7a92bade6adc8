import math

import pytest

from prefopt.errors import ConfigError
from prefopt.tasks import get_task
from prefopt.tasks.prefdata import bt_prob


def test_reviews_gold_hand_values():
    t = get_task("reviews")
    p = "review of the zenta phone:"
    # 2 sentences: battery great (+1), screen awful (-1) → positivity 0; aspects {battery, screen} of 4 → 0.5;
    # 10 words of max 24 → brevity 1 - 10/24.
    s = t.score(p, " the battery is great . the screen is awful .")
    assert s["positivity"] == 0.0 and s["informativeness"] == 0.5
    assert s["brevity"] == pytest.approx(1 - 10 / 24)
    # generic praise: positivity 1, no aspects.
    s = t.score(p, " i love it .")
    assert s == {"positivity": 1.0, "informativeness": 0.0, "brevity": pytest.approx(1 - 4 / 24)}
    # an aspect of another product ("lens") is not informative about a phone.
    assert t.score(p, " the lens is good .")["informativeness"] == 0.0


def test_reviews_splits_are_disjoint_and_seeded():
    t = get_task("reviews")
    train, ev = set(t.prompts("train", 500)), set(t.prompts("eval", 200))
    assert train and ev and not train & ev
    assert t.prompts("eval", 5, seed=3) == t.prompts("eval", 5, seed=3)


def test_reviews_objectives_conflict():
    """The best response for one objective is not the best for another."""
    t = get_task("reviews")
    corpus = t.sft_corpus(2000, seed=1)
    g = t.gold([p for p, _ in corpus], [r for _, r in corpus])

    def corr(a, b):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
        return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))

    assert corr(g["informativeness"], g["brevity"]) < -0.5
    assert corr(g["positivity"], g["informativeness"]) < 0
    best_inf = max(range(len(corpus)), key=lambda i: (g["informativeness"][i], g["positivity"][i]))
    best_brev = max(range(len(corpus)), key=lambda i: g["brevity"][i])
    assert g["brevity"][best_inf] < g["brevity"][best_brev]
    assert g["informativeness"][best_brev] < g["informativeness"][best_inf]


def test_arithmetic_exact_match():
    t = get_task("arithmetic", digits=2, ops="+-*")
    g = t.gold(["37+48=", "37+48=", "9-12=", "7*6=", "7*6="], ["85", " 85 ", "-3", "41", "4 2"])
    assert g["correct"] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert g["format"] == [1.0, 1.0, 1.0, 1.0, 0.0]
    train, ev = set(t.prompts("train", 300)), set(t.prompts("eval", 100))
    assert not train & ev
    assert all(t.gold([p], [r])["correct"] == [1.0] for p, r in t.sft_corpus(50))


def test_arithmetic_split_is_not_a_function_of_digit_sum():
    """Held-out problems must look like training ones (an earlier hash split by digit sum mod 5)."""
    t = get_task("arithmetic", digits=2, ops="+")

    def digit_sum_mod5(p):
        return sum(int(c) for c in p if c.isdigit()) % 5

    for split in ("train", "eval"):
        classes = [digit_sum_mod5(p) for p in t.prompts(split, 2000, seed=0)]
        shares = [classes.count(k) / len(classes) for k in range(5)]
        assert max(shares) < 0.3, (split, shares)


def test_arithmetic_bad_options():
    with pytest.raises(ConfigError, match="digits"):
        get_task("arithmetic", digits=0)
    with pytest.raises(ConfigError, match="did you mean 'reviews'"):
        get_task("reveiws")


def test_bradley_terry_probability():
    # σ((1 - 0.5)/0.25) = σ(2) = 1/(1+e^-2)
    assert bt_prob(1.0, 0.5, 0.25) == pytest.approx(1 / (1 + math.exp(-2)))
    assert bt_prob(1.0, 0.5, 0.0) == 1.0 and bt_prob(0.3, 0.3, 0.1) == 0.5


def test_tokenizer_roundtrip_via_autotokenizer(reviews_tokenizer, tmp_path):
    from transformers import AutoTokenizer
    reviews_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = " the battery is great . i love it ."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>"
    assert tok("37+48=", add_special_tokens=False)["input_ids"][:2] != tok("3", add_special_tokens=False)["input_ids"] * 2


def test_preference_generator_flip_rate_and_schema(reviews_tokenizer, tiny_llama):
    from prefopt.rollout.engine import SamplingConfig
    from prefopt.tasks.prefdata import PrefDataConfig, make_preference_data
    t = get_task("reviews")
    cfg = PrefDataConfig(num_prompts=60, flip_rate=0.3, bt_temperature=0.0, seed=1,
                         sampling=SamplingConfig(max_new_tokens=12))
    rows, stats = make_preference_data(tiny_llama, reviews_tokenizer, t, cfg)
    assert stats.pairs + stats.identical_skipped == 60
    assert rows and set(rows[0]) >= {"prompt", "chosen", "rejected", "scores"}
    assert set(rows[0]["scores"]) == set(t.objectives)
    # With a hard (temperature 0) labeller, unflipped pairs prefer the higher gold score.
    for r in rows:
        c, rj = r["scores"]["positivity"]
        if not r["flipped"] and c != rj:
            assert c > rj
    assert 0 < stats.flipped < stats.pairs


def test_pass_fail_objectives_are_objectives_scoring_0_or_1():
    from prefopt.tasks import TASKS

    for name in TASKS:
        task = get_task(name)
        assert set(task.pass_fail) <= set(task.objectives), name
        if task.pass_fail:
            prompts = task.prompts("eval", 8, seed=0)
            gold = task.gold(prompts, ["12", "x", "", "-3", "7", "100", "0", "5"])
            assert all(v in (0.0, 1.0) for k in task.pass_fail for v in gold[k]), name
    assert get_task("arithmetic").pass_fail == ("correct", "format")


def test_task_tokenizer_cache_key_follows_the_corpus(monkeypatch, tmp_path):
    """A cached tokenizer is reused only for the same corpus: a stale cache must not outlive a change
    of the task's text or seeds (a fresh checkout would build another tokenizer)."""
    import prefopt.cli.run as run
    from prefopt.tasks.reviews import ReviewsTask

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))
    run._tokenizer_key.cache_clear(), run._tokenizer_corpus.cache_clear()
    run.task_tokenizer("reviews", {})
    monkeypatch.setattr(ReviewsTask, "tokenizer_corpus", lambda self: ["a changed corpus"] * 50)
    run._tokenizer_key.cache_clear(), run._tokenizer_corpus.cache_clear()
    run.task_tokenizer("reviews", {})
    run._tokenizer_key.cache_clear(), run._tokenizer_corpus.cache_clear()
    assert len(list((tmp_path / "tokenizers").glob("reviews-*"))) == 2
