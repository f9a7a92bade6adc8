"""Small local datasets for the offline tests (no hub access): lab pairs ordered by gold
positivity, their unpaired and conversational forms."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prefopt.tasks import get_task


def lab_pairs(n: int = 32, seed: int = 0) -> list[dict]:
    """Pairs of reviews-corpus responses for one prompt, chosen = higher gold positivity (ties skipped)."""
    task = get_task("reviews")
    corpus = task.sft_corpus(6 * n, seed=seed)
    rows = []
    for i in range(0, len(corpus) - 1, 2):
        prompt, a = corpus[i]
        _, b = corpus[i + 1]
        g = task.gold([prompt, prompt], [a, b])["positivity"]
        if g[0] == g[1] or a == b:
            continue
        chosen, rejected = (a, b) if g[0] > g[1] else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "scores": {"positivity": [max(g), min(g)]}})
        if len(rows) == n:
            break
    return rows


def to_unpaired(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


def to_conversational(rows: list[dict], system: bool = True) -> list[dict]:
    """Explicit-prompt conversational form: prompt = [system?, user], chosen/rejected = [assistant]."""
    out = []
    for r in rows:
        prompt = ([{"role": "system", "content": "you write reviews ."}] if system else [])
        prompt.append({"role": "user", "content": r["prompt"]})
        out.append({"prompt": prompt,
                    "chosen": [{"role": "assistant", "content": r["chosen"].strip()}],
                    "rejected": [{"role": "assistant", "content": r["rejected"].strip()}]})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def base_config(path: Path, out: Path, **sections) -> list[str]:
    """CLI overrides for a fast run on a tiny model."""
    args = [f"data.path={path}", "data.task=reviews", "data.eval_examples=4", "data.max_length=64",
            "data.max_prompt_length=24", "model.name_or_path=tiny:llama-1m", "train.steps=2",
            "train.batch_size=4", "train.progress=false", "train.warmup_steps=0", f"output_dir={out}"]
    for k, v in sections.items():
        args.append(f"{k.replace('__', '.')}={v}")
    return args


@pytest.fixture(autouse=False)
def one_thread():
    """Run a test on one torch thread (restored after): on a shared 2-core machine, two busy-waiting
    threads per process make these tiny models many times slower, one thread never is."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
