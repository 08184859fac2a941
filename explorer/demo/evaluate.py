"""Evaluate the demo model: greedy decoding, refusal judged by :func:`explorer.judges.is_refusal`.

Sets: held-out harmful and benign prompts from :func:`explorer.demo.corpus.heldout_examples`
and, when the benchmark folder exists, AdvBench and JailbreakBench (harmful and
benign). The benchmark folder is ``$EXPLORER_SHARED_DATA`` or ``<repo>/../shared/data``.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

MAX_NEW_TOKENS = 48


def load_model(model_dir):
    """Load (model, tokenizer) from ``model_dir`` in float32 for CPU inference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, experts_implementation="eager")
    model.eval()
    return model, tok


def generate(model, tok, prompts, max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 32) -> list[str]:
    """Greedy replies to single-turn ``prompts`` (chat template applied, left padding)."""
    import torch

    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together
    out = [""] * len(texts)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for j, i in enumerate(idx):
            out[i] = tok.decode(gen[j, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return out


def refusal_rate(replies) -> float:
    """Fraction of replies judged refusals."""
    from explorer.judges import is_refusal

    return sum(is_refusal(r) for r in replies) / max(1, len(replies))


def _sample(rows, n):
    if n is None or n >= len(rows):
        return rows
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def benchmark_sets(adv_sample: int | None = None, data_dir=None) -> dict:
    """``{name: (goals, is_harmful)}`` for the benchmark CSVs that exist (empty dict otherwise).

    ``adv_sample`` evenly subsamples every set (None: all rows); ``data_dir`` is the CSV
    folder (default :func:`~explorer.core.paths.shared_data_dir`).
    """
    from explorer.core.paths import shared_data_dir
    from explorer.evaluation.datasets import load_goals

    d = shared_data_dir(data_dir)
    if d is None:
        return {}
    sets = {}
    for name, fname, harmful in (("advbench", "advbench_harmful_behaviors.csv", True),
                                 ("jbb_harmful", "jbb_harmful_behaviors.csv", True),
                                 ("jbb_benign", "jbb_benign_behaviors.csv", False)):
        f = d / fname
        if f.exists():
            sets[name] = ([r["goal"] for r in _sample(load_goals(f), adv_sample)], harmful)
    return sets


def evaluate_all(model_dir, heldout, adv_sample: int | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                 log=print) -> dict:
    """Evaluate held-out examples and available benchmarks; return a results dict.

    ``summary`` holds refusal rates per set and, for held-out benign prompts, the
    fraction of replies that copy the requested topic phrase.
    """
    model, tok = load_model(model_dir)
    t0 = time.time()
    sets = {"heldout_harmful": ([e["prompt"] for e in heldout if e["is_harmful"]], True),
            "heldout_benign": ([e["prompt"] for e in heldout if not e["is_harmful"]], False)}
    sets.update(benchmark_sets(adv_sample))
    res = {"decoding": f"greedy, max_new_tokens={max_new_tokens}", "judge": "explorer.judges.is_refusal",
           "sets": {}, "summary": {}}
    for name, (prompts, harmful) in sets.items():
        replies = generate(model, tok, prompts, max_new_tokens)
        rate = refusal_rate(replies)
        res["sets"][name] = {"n": len(prompts), "harmful": harmful, "refusal_rate": round(rate, 4),
                             "examples": [{"prompt": p, "reply": r} for p, r in list(zip(prompts, replies))[:5]]}
        res["summary"][f"{name}_refusal"] = round(rate, 4)
        if name == "heldout_benign":
            topics = [e["topic"] for e in heldout if not e["is_harmful"]]
            copied = sum(t.lower() in r.lower() for t, r in zip(topics, replies)) / max(1, len(topics))
            sure = sum(r.startswith("Sure, here is") for r in replies) / max(1, len(replies))
            res["summary"]["heldout_benign_topic_copied"] = round(copied, 4)
            res["summary"]["heldout_benign_sure"] = round(sure, 4)
        log(f"[evaluate] {name}: n={len(prompts)} refusal={rate:.3f} ({time.time() - t0:.0f}s)")
    res["eval_seconds"] = round(time.time() - t0, 1)
    return res


def write_sha256sums(model_dir) -> None:
    """Write ``SHA256SUMS`` (``sha256sum`` format) for every file in ``model_dir``."""
    d = Path(model_dir)
    lines = []
    for f in sorted(p for p in d.iterdir() if p.is_file() and p.name != "SHA256SUMS"):
        lines.append(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}")
    (d / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def write_card(model_dir, res: dict, extra: dict) -> None:
    """Write the model card ``README.md`` into ``model_dir``."""
    from explorer.demo.card import render_card

    (Path(model_dir) / "README.md").write_text(render_card(Path(model_dir), res, extra))
