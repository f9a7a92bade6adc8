"""Online prompts through the offline loaders: every format, column mapping, conversations rendered
with the chat template (one BOS), the held-out split, named bad-row errors, rewards/judges/gold that
receive the prompt as given, and a GRPO run on conversational prompts end to end."""
import csv
import json
import math

import pytest

from prefopt.cli.config import from_dict
from prefopt.cli.run import run_train, task_tokenizer
from prefopt.data.chat import set_chat_template
from prefopt.data.prompts import PromptSet, load_prompts, read_prompts
from prefopt.errors import ConfigError, DataError
from prefopt.rollout.scorers import Judge, RewardError, RewardFunction, resolve_scorer
from prefopt.rollout.text import encode_prompts
from prefopt.tasks import get_task
from prefopt.train.config import TrainConfig
from prefopt.train.metrics import read_metrics

import online_reward_fns

# A Jinja template written for these tests: it writes the BOS itself, as Llama/Gemma templates do.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CONV = [{"role": "system", "content": "be brief ."}, {"role": "user", "content": "review of the zenta phone:"}]
RENDERED = "<bos><|system|>be brief .\n<|user|>review of the zenta phone:\n<|assistant|>"
PLAIN = "review of the pico kettle:"


@pytest.fixture
def chat_tok():
    tok = task_tokenizer("reviews", {})  # a fresh object: the template does not leak to other tests
    set_chat_template(tok, TEMPLATE)
    return tok


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sources(tmp_path) -> dict:
    """The same two prompts (a conversation, a text) under the column 'question', in every format."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    rows = [{"question": CONV, "id": 1}, {"question": [{"role": "user", "content": PLAIN}], "id": 2}]
    out = {"jsonl": _write_jsonl(tmp_path / "p.jsonl", rows)}
    (tmp_path / "p.json").write_text(json.dumps(rows))
    out["json"] = tmp_path / "p.json"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    out["parquet"] = tmp_path / "p.parquet"
    with open(tmp_path / "p.csv", "w", newline="") as fh:  # conversations as JSON cells
        w = csv.writer(fh)
        w.writerow(["question", "id"])
        w.writerows([[json.dumps(r["question"]), r["id"]] for r in rows])
    out["csv"] = tmp_path / "p.csv"
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    out["datasets"] = tmp_path / "ds"
    return out


def test_every_format_with_column_mapping_gives_the_same_prompts(tmp_path, chat_tok):
    for fmt, path in _sources(tmp_path).items():
        ps = read_prompts(path, chat_tok, columns={"prompt": "question"})
        assert ps.raw == [CONV, [{"role": "user", "content": PLAIN}]], fmt
        assert ps.texts == [RENDERED, f"<bos><|user|>{PLAIN}\n<|assistant|>"], fmt
        assert ps.conversational == 2 and ps.skipped == 0


def test_text_and_conversation_prompts_mix_and_messages_drop_the_final_answer(tmp_path, chat_tok):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": PLAIN}, {"prompt": CONV},
        {"messages": CONV + [{"role": "assistant", "content": "i love it ."}]}])
    ps = read_prompts(path, chat_tok)
    assert ps.raw == [PLAIN, CONV, CONV]  # the answer held in 'messages' never reaches the policy
    assert ps.texts == [PLAIN, RENDERED, RENDERED]


def test_a_template_writing_bos_gives_exactly_one_bos(chat_tok):
    from tokenizers import processors

    bos = chat_tok.bos_token_id
    # make the tokenizer add a BOS of its own, so a second one would appear if encoding added special tokens
    chat_tok._tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    assert chat_tok(RENDERED)["input_ids"][:2] == [bos, bos]  # what add_special_tokens=True would do
    (ids, plain_ids), truncated = encode_prompts(chat_tok, [RENDERED, PLAIN])
    assert ids[0] == bos and ids.count(bos) == 1 and bos not in plain_ids and truncated == 0
    assert chat_tok.decode(ids) == RENDERED
    # a conversation given as messages is rendered by encode_prompts itself, to the same ids
    assert encode_prompts(chat_tok, [CONV])[0] == [ids]


def test_held_out_split_like_offline(tmp_path, chat_tok):
    from datasets import Dataset, DatasetDict

    prompts = [f"review of the zenta phone: {i}" for i in range(25)]
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts])
    train, held_out = load_prompts(path, chat_tok, eval_examples=5)
    assert held_out.raw == prompts[:2] and train.raw == prompts[2:]  # min(5, 25 // 10) from the front
    train, held_out = load_prompts(path, chat_tok, eval_examples=0)
    assert len(held_out) == 0 and train.raw == prompts
    other = _write_jsonl(tmp_path / "e.jsonl", [{"prompt": CONV}])
    train, held_out = load_prompts(path, chat_tok, eval_path=other)
    assert train.raw == prompts and held_out.texts == [RENDERED]
    DatasetDict({"train": Dataset.from_list([{"prompt": p} for p in prompts]),
                 "test": Dataset.from_list([{"prompt": PLAIN}])}).save_to_disk(str(tmp_path / "dd"))
    train, held_out = load_prompts(tmp_path / "dd", chat_tok, split="train[:3]", eval_split="test")
    assert train.raw == prompts[:3] and held_out.raw == [PLAIN]


# ----------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize("rows, columns, message", [
    ([{"prompt": PLAIN}, {"text": "x"}], None,
     r"p.jsonl, row 2: missing field 'prompt' \(columns present: text\); expected a prompt row \(prompt\)"),
    ([{"q": PLAIN}, {"q": 3}], {"prompt": "q"},
     r"p.jsonl, row 2: column 'q' \(mapped to 'prompt'\): expected a string or a list of \{role, content\} messages"),
    ([{"prompt": [{"role": "user"}]}], None, r"row 1: column 'prompt': message 0 must have string 'role' and 'content'"),
    ([{"prompt": CONV + [{"role": "assistant", "content": "ok ."}]}], None,
     r"row 1: column 'prompt': the last message is the assistant's"),
    ([{"messages": [{"role": "assistant", "content": "ok ."}]}], None, r"row 1: column 'messages': .*no turn before"),
])
def test_bad_rows_are_named_errors_or_skipped(tmp_path, chat_tok, rows, columns, message):
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=message):
        read_prompts(path, chat_tok, columns=columns)
    good = _write_jsonl(tmp_path / "p.jsonl", [{"prompt" if not columns else "q": PLAIN}] + rows)
    ps = read_prompts(good, chat_tok, columns=columns, on_bad_row="skip")
    assert ps.raw[0] == PLAIN and ps.skipped == sum(r not in ({"prompt": PLAIN}, {"q": PLAIN}) for r in rows)


def test_missing_column_suggests_the_closest(tmp_path, chat_tok):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"question": PLAIN}])
    with pytest.raises(DataError, match=r"no column 'questoin'; did you mean 'question'"):
        read_prompts(path, chat_tok, columns={"prompt": "questoin"})


def test_conversations_without_a_template_name_the_row_and_the_key(tmp_path):
    tok = task_tokenizer("reviews", {})
    tok.chat_template = None
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": PLAIN}, {"prompt": CONV}])
    with pytest.raises(DataError, match=r"p.jsonl, row 2: a conversational prompt needs a tokenizer with a chat "
                                        r"template.*data.chat_template"):
        read_prompts(path, tok)
    assert read_prompts(_write_jsonl(tmp_path / "t.jsonl", [{"prompt": PLAIN}]), tok).texts == [PLAIN]
    with pytest.raises(DataError, match="data.chat_template"):
        PromptSet.from_prompts([CONV], tok)


def test_a_template_that_refuses_a_conversation_names_the_row(tmp_path, chat_tok):
    chat_tok.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
                              + TEMPLATE)
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": PLAIN}, {"prompt": CONV}])
    with pytest.raises(DataError, match=r"p.jsonl, row 2: column 'prompt': the chat template cannot render this "
                                        r"conversation \(.*no system turns\)"):
        read_prompts(path, chat_tok)
    ps = read_prompts(path, chat_tok, on_bad_row="skip")
    assert ps.raw == [PLAIN] and ps.skipped == 1


# ----------------------------------------------------------------------------- rewards, judges, gold


def test_gold_rewards_take_the_last_user_turn_of_a_conversation():
    reviews = get_task("reviews")
    multi = [{"role": "user", "content": "review of the pico kettle:"}, {"role": "assistant", "content": "ok ."},
             {"role": "user", "content": "review of the zenta phone:"}]
    response = " the battery is great . the camera is bad ."
    as_text = reviews.gold(["review of the zenta phone:"], [response])
    assert reviews.gold([CONV], [response]) == reviews.gold([multi], [response]) == as_text
    assert as_text["informativeness"] == [0.5]  # hand-derived: battery and camera of 4 phone aspects
    arithmetic = get_task("arithmetic")
    problem = arithmetic.prompts("train", 1, seed=3)[0]
    from prefopt.tasks.arithmetic import answer
    right = f" {answer(problem)}"
    assert arithmetic.gold([[{"role": "user", "content": problem}]], [right])["correct"] == [1.0]
    with pytest.raises(DataError, match=r"no user turn \(roles: system\)"):
        reviews.gold([[{"role": "system", "content": "x"}]], [response])


def test_reward_functions_and_judges_receive_messages_and_name_them_in_errors():
    online_reward_fns.SEEN_PROMPTS.clear()
    rf = RewardFunction(online_reward_fns.messages_only, "online_reward_fns:messages_only", "m")
    assert rf([CONV, CONV], ["a b", "c"]).components == {"m": [2.0, 1.0]}
    assert online_reward_fns.SEEN_PROMPTS == [CONV, CONV]
    boom = RewardFunction(online_reward_fns.raises_on_second, "online_reward_fns:raises_on_second", "r")
    with pytest.raises(RewardError, match=r"on sample 1 \(prompt 0: 'user: review of the zenta phone:'\)"):
        boom([CONV, CONV], ["ok", "boom"], row_prompt=[0, 0])
    judge = Judge(online_reward_fns.messages_judge, "online_reward_fns:messages_judge")
    assert judge([CONV], ["a longer one"], ["short"]) == ([1.0], 0)
    with pytest.raises(RewardError, match=r"judge 'bad': returned 1.7.*\(prompt 'user: review of the zenta"):
        Judge(online_reward_fns.bad_judge, "bad")([CONV], ["a"], ["b"])


def test_reward_model_renders_conversations_with_its_template(tmp_path, reviews_tokenizer):
    from prefopt.models.config import ModelConfig
    from prefopt.models.reward import build_reward_model

    model = build_reward_model(ModelConfig(name_or_path="tiny:llama-1m"), reviews_tokenizer, seed=1)
    model.save_pretrained(tmp_path / "rm")
    reviews_tokenizer.save_pretrained(tmp_path / "rm")  # a lab tokenizer: no chat template saved
    user = [{"role": "user", "content": "review of the zenta phone:"}]
    plain, _ = resolve_scorer(f"reward_model:{tmp_path / 'rm'}")
    with pytest.raises(ConfigError, match=r"reward 'reward_model:.*conversations.*\{chat_template: simple\}"):
        RewardFunction(plain, "rm", "rm")([user], ["i love it ."])
    chat, _ = resolve_scorer(f"reward_model:{tmp_path / 'rm'}", options={"chat_template": "simple"})
    # 'simple' renders the prompt as "user: ...\nassistant:" and the answer as " ...<eos>"
    expected = plain(["user: review of the zenta phone:\nassistant:"], [" i love it ."])
    assert chat([user], ["i love it ."]) == expected


# ----------------------------------------------------------------------------- end to end


def _cfg(tmp_path, algo, path, **online) -> TrainConfig:
    return from_dict(TrainConfig, {
        "model": {"name_or_path": "tiny:llama-1m"},
        "data": {"task": "reviews", "path": str(path), "eval_examples": 2, "chat_template": TEMPLATE,
                 "columns": {"prompt": "conversation"}},
        "optim": {"lr": 1e-3},
        "train": {"steps": 2, "batch_size": 4, "progress": False, "lr_schedule": "constant", "eval_every": 2},
        "algo": {"name": algo},
        "rollout": {"max_new_tokens": 6},
        "online": {"prompts_per_step": 2, "eval_num_samples": 1, **online},
        "output_dir": str(tmp_path), "run_name": algo,
    })


def _conversations(tmp_path, n=20):
    products = ["phone", "kettle", "laptop", "watch", "camera"]
    rows = [{"conversation": [{"role": "system", "content": "be brief ."},
                              {"role": "user", "content": f"review of the zenta {products[i % 5]}:"}]}
            for i in range(n)]
    return _write_jsonl(tmp_path / "conv.jsonl", rows), [r["conversation"] for r in rows]


def test_grpo_on_conversational_prompts_end_to_end(tmp_path):
    path, conversations = _conversations(tmp_path)
    online_reward_fns.SEEN_PROMPTS.clear()
    out = run_train(_cfg(tmp_path, "grpo", path, reward=[{"name": "online_reward_fns:messages_only"}]))
    assert out.result.steps == 2
    assert out.data_stats["data/prompts"] == 18 and out.data_stats["data/eval/prompts"] == 2
    assert out.data_stats["data/prompts_conversational"] == 18
    seen = online_reward_fns.SEEN_PROMPTS
    # the reward saw the training conversations as given (2 steps x 2 prompts x 4 samples) and the held-out ones
    assert all(p in conversations for p in seen) and len(seen) >= 2 * 2 * 4
    assert any(p == conversations[0] for p in seen)  # held-out slice: the file's first 2 rows
    rows = read_metrics(out.run_dir / "metrics.jsonl")
    evals = [r for r in rows if "eval/reward" in r]
    assert evals and "eval/gold/positivity" in evals[-1]  # the lab's gold reward took the conversations too
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["reward/messages_only"]) for r in steps)


def test_the_policy_samples_from_the_rendered_conversation(tmp_path):
    from prefopt.cli.builders.online import build_policy_gradient
    from prefopt.models.config import ModelConfig
    from prefopt.models.loading import load_model

    path, conversations = _conversations(tmp_path)
    cfg = _cfg(tmp_path, "grpo", path, reward=[{"name": "online_reward_fns:messages_only"}])
    tok = task_tokenizer("reviews", {})
    algo, stats = build_policy_gradient(cfg, load_model(ModelConfig(name_or_path="tiny:llama-1m"), tok), tok)
    exp = algo.exp
    assert exp.raw_prompts == conversations[2:] and exp.raw_eval_prompts == conversations[:2]
    text = "<bos><|system|>be brief .\n<|user|>review of the zenta laptop:\n<|assistant|>"
    assert exp.prompts[0] == text and tok.decode(exp.prompt_ids[0]) == text  # row 3 of the file: a laptop
    assert exp.prompt_ids[0].count(tok.bos_token_id) == 1


def test_online_dpo_judge_receives_conversations(tmp_path):
    path, conversations = _conversations(tmp_path, n=10)
    online_reward_fns.SEEN_PROMPTS.clear()
    cfg = _cfg(tmp_path, "online_dpo", path, judge="online_reward_fns:messages_judge",
               reward=[{"name": "online_reward_fns:messages_only"}])
    cfg.train.steps = 1
    assert run_train(cfg).result.steps == 1
    assert online_reward_fns.SEEN_PROMPTS and all(p in conversations for p in online_reward_fns.SEEN_PROMPTS)
