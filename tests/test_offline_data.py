"""Offline data: every loader format, column mapping, schemas, bad rows, truncation, counts."""
import csv
import json

import pytest

from prefopt.data.loaders import apply_columns, load_rows, read_records, validate
from prefopt.data.prepare import encode_pairwise, encode_sft, encode_unpaired, fit, pairs_to_unpaired
from prefopt.errors import DataError

from offline_fixtures import lab_pairs, to_conversational, to_unpaired, write_jsonl, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [{"prompt": "p1", "chosen": "a", "rejected": "b", "weight": 0.5},
         {"prompt": "p2", "chosen": "c", "rejected": "d", "weight": 2}]


def _same(rows):
    return [(r["prompt"], r["chosen"], r["rejected"], r.get("weight", 1.0)) for r in rows]


def test_jsonl_json_parquet_csv_tsv_give_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "d.jsonl", PAIRS)
    (tmp_path / "d.json").write_text(json.dumps(PAIRS))
    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "d.parquet")
    for name, delim in (("d.csv", ","), ("d.tsv", "\t")):
        with open(tmp_path / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["prompt", "chosen", "rejected", "weight"], delimiter=delim)
            w.writeheader()
            w.writerows(PAIRS)
    expected = _same(validate(PAIRS, "pairwise", "mem").rows)
    for name in ("d.jsonl", "d.json", "d.parquet", "d.csv", "d.tsv"):
        got = load_rows(tmp_path / name, "pairwise")
        assert _same(got.rows) == expected, name


def test_datasets_save_to_disk_dataset_and_dict_with_split(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list(PAIRS)
    ds.save_to_disk(str(tmp_path / "one"))
    assert _same(load_rows(tmp_path / "one", "pairwise").rows) == _same(validate(PAIRS, "pairwise").rows)
    DatasetDict({"train": ds, "test": Dataset.from_list(PAIRS[:1])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_rows(tmp_path / "dd", "pairwise").rows) == 2  # default split: train
    assert [r["prompt"] for r in load_rows(tmp_path / "dd", "pairwise", split="test").rows] == ["p1"]
    assert [r["prompt"] for r in load_rows(tmp_path / "dd", "pairwise", split="train[1:]").rows] == ["p2"]
    with pytest.raises(DataError, match=r"no split 'validation' \(splits: train, test\)"):
        load_rows(tmp_path / "dd", "pairwise", split="validation")


def test_datasets_directory_of_data_files(tmp_path, monkeypatch):
    _offline(monkeypatch)
    write_jsonl(tmp_path / "dir" / "train.jsonl", PAIRS)
    rows = load_rows(tmp_path / "dir", "pairwise", split="train").rows
    assert [r["chosen"] for r in rows] == ["a", "c"]


def test_conversational_dataset_saved_with_datasets(tmp_path):
    from datasets import Dataset

    conv = to_conversational(lab_pairs(3))
    Dataset.from_list(conv).save_to_disk(str(tmp_path / "conv"))
    v = load_rows(tmp_path / "conv", "pairwise")
    assert v.conversational == 3
    assert v.rows[0]["prompt"][0]["role"] == "system" and v.rows[0]["chosen"][0]["role"] == "assistant"


def test_implicit_prompt_conversations_and_sft_messages():
    user = {"role": "user", "content": "hi"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "good"}],
             "rejected": [user, {"role": "assistant", "content": "bad"}]}]
    r = validate(rows, "pairwise").rows[0]
    assert r["prompt"] == [user] and r["chosen"] == [{"role": "assistant", "content": "good"}]
    sft = validate([{"messages": [user, {"role": "assistant", "content": "ok"}]}], "sft").rows[0]
    assert sft["prompt"] == [user] and sft["completion"][0]["content"] == "ok"
    with pytest.raises(DataError, match="differ before their last turn"):
        validate([{"chosen": [user, {"role": "assistant", "content": "a"}],
                   "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}],
                 "pairwise")


def test_column_mapping_and_score_columns(tmp_path):
    rows = [{"q": "p", "good": "a", "bad": "b", "h_good": 1.0, "h_bad": 0.0, "extra": 7}]
    write_jsonl(tmp_path / "m.jsonl", rows)
    v = load_rows(tmp_path / "m.jsonl", "pairwise", columns={"prompt": "q", "chosen": "good", "rejected": "bad"},
                  score_columns={"helpful": ["h_good", "h_bad"]})
    r = v.rows[0]
    assert (r["prompt"], r["chosen"], r["rejected"]) == ("p", "a", "b")
    assert r["scores"] == {"helpful": [1.0, 0.0]} and r["extra"]["extra"] == 7
    with pytest.raises(DataError, match=r"no column 'goood'; did you mean 'good'"):
        load_rows(tmp_path / "m.jsonl", "pairwise", columns={"chosen": "goood"})


def test_bad_row_names_file_line_column_and_expectation(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], {"prompt": "p", "chosen": 3, "rejected": "x"}, PAIRS[1]])
    with pytest.raises(DataError) as err:
        load_rows(path, "pairwise")
    msg = str(err.value)
    assert f"{path}, row 2: column 'chosen': expected a string" in msg and "expected a pairwise row" in msg
    v = load_rows(path, "pairwise", on_bad_row="skip")
    assert len(v.rows) == 2 and v.skipped == 1 and "row 2" in v.problems[0]


def test_bad_row_reports_the_mapped_source_column(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"q": None, "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"row 1: missing field 'prompt' \(source column 'q'\)"):
        load_rows(path, "pairwise", columns={"prompt": "q"})


def test_csv_bad_weight_and_labels(tmp_path):
    with open(tmp_path / "u.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "completion", "label", "weight"])
        w.writerows([["p", "a", "true", "1"], ["p", "b", "0", "2.5"], ["p", "c", "maybe", "1"]])
    with pytest.raises(DataError, match=r"u.csv, row 3: column 'label': expected a boolean"):
        load_rows(tmp_path / "u.csv", "unpaired")
    v = load_rows(tmp_path / "u.csv", "unpaired", on_bad_row="skip")
    assert [(r["label"], r["weight"]) for r in v.rows] == [(True, 1.0), (False, 2.5)] and v.skipped == 1
    with pytest.raises(DataError, match="column 'weight': expected a number >= 0"):
        validate([{"prompt": "p", "chosen": "a", "rejected": "b", "weight": -1}], "pairwise")


def test_kto_data_given_to_a_pairwise_loss_says_so(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", to_unpaired(lab_pairs(2)))
    with pytest.raises(DataError, match=r"looks like unpaired binary feedback .*algo.name: kto"):
        load_rows(path, "pairwise")


def test_unknown_type_and_missing_file(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        read_records(tmp_path / "x.txt")
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "nope.jsonl")


def _offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_name_without_network_fails_in_one_line(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(DataError, match="cannot load dataset 'someorg/nonexistent-prefs'"):
        read_records("someorg/nonexistent-prefs", split="train")


def test_identical_and_empty_pairs_are_counted_not_silently_dropped(reviews_tokenizer, caplog):
    rows = validate([{"prompt": "p", "chosen": "a", "rejected": "a"}, {"prompt": "p", "chosen": " ", "rejected": "b"},
                     {"prompt": "p", "chosen": "good", "rejected": "bad"}], "pairwise").rows
    with caplog.at_level("WARNING"):
        pairs, stats = encode_pairwise(reviews_tokenizer, rows, max_length=32, max_prompt_length=16, source="s")
    assert len(pairs) == 1 and stats.identical_pairs == 1 and stats.empty_responses == 1
    assert "identical" in caplog.text and "empty response" in caplog.text
    assert stats.metrics()["data/identical_pairs_dropped"] == 1


def test_truncation_keeps_response_trims_prompt_left_and_counts(reviews_tokenizer):
    prompt = "review of the zenta phone: " * 6 + "review of the korvo kettle:"
    rows = validate([{"prompt": prompt, "chosen": " the lid is great .", "rejected": " do not buy ."}], "pairwise").rows
    (pair,), stats = encode_pairwise(reviews_tokenizer, rows, max_length=20, max_prompt_length=8, source="s")
    full_prompt = reviews_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    chosen = reviews_tokenizer(" the lid is great .", add_special_tokens=False)["input_ids"]
    assert stats.truncated == 1 and pair.truncated
    assert pair.chosen_ids == chosen + [reviews_tokenizer.eos_token_id]  # response intact
    assert pair.prompt_ids == full_prompt[-len(pair.prompt_ids):] and len(pair.prompt_ids) <= 8  # left-trimmed
    # A response longer than max_length keeps one prompt token and is cut from the right.
    p, (r,), truncated = fit([1, 2, 3], [list(range(10, 30))], 8, 4)
    assert p == [3] and r == list(range(10, 17)) and truncated


def test_unpaired_encoding_has_fixed_mismatched_kl_partners(reviews_tokenizer):
    rows = validate(to_unpaired(lab_pairs(4)), "unpaired").rows
    ex, stats = encode_unpaired(reviews_tokenizer, rows, max_length=64, max_prompt_length=24, seed=1)
    assert len(ex) == 8 and [e.index for e in ex] == list(range(8))
    assert all(e.kl_completion_ids != e.completion_ids for e in ex)
    again, _ = encode_unpaired(reviews_tokenizer, rows, max_length=64, max_prompt_length=24, seed=1)
    assert [e.kl_completion_ids for e in ex] == [e.kl_completion_ids for e in again]
    assert sum(e.label for e in ex) == 4
    assert len(pairs_to_unpaired(validate(lab_pairs(3), "pairwise").rows)) == 6


def test_sft_rows_from_conversations(reviews_tokenizer):
    from prefopt.data.chat import set_chat_template

    set_chat_template(reviews_tokenizer, "simple")
    try:
        rows = validate([{"messages": [{"role": "user", "content": "review of the zenta phone:"},
                                       {"role": "assistant", "content": "i love it ."}]}], "sft").rows
        (enc,), stats = encode_sft(reviews_tokenizer, rows, max_length=64, max_prompt_length=32)
        assert reviews_tokenizer.decode(enc.response_ids) == " i love it .<eos>" and stats.conversational == 1
    finally:
        reviews_tokenizer.chat_template = None


def test_apply_columns_keeps_swapped_mapping():
    from prefopt.data.loaders import Records

    rec = apply_columns(Records([{"prompt": "p", "chosen": "a", "rejected": "b"}], "m"),
                        {"chosen": "rejected", "rejected": "chosen"})
    assert (rec.rows[0]["chosen"], rec.rows[0]["rejected"]) == ("b", "a")


def test_jsonl_row_and_line_differ_with_blank_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n\n" + json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(DataError, match=r"gaps.jsonl, row 2 \(line 4\): missing field 'chosen'"):
        load_rows(path, "pairwise")


def test_csv_conversations_and_scores_as_json_cells(tmp_path):
    conv = to_conversational(lab_pairs(1))[0]
    with open(tmp_path / "c.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "chosen", "rejected", "scores"])
        w.writerow([json.dumps(conv["prompt"]), json.dumps(conv["chosen"]), "[1, 2]", json.dumps({"g": [1, 0]})])
    v = load_rows(tmp_path / "c.csv", "pairwise")
    r = v.rows[0]
    assert r["conversational"] and r["prompt"][0]["role"] == "system" and r["scores"] == {"g": [1.0, 0.0]}
    assert r["rejected"] == [{"role": "assistant", "content": "[1, 2]"}]  # not JSON-decoded: plain text
