"""Command line for the bundled demo model: ``python -m explorer.demo <command>``.

Commands:
  build     corpus -> tokenizer -> train -> evaluate -> model card + SHA256SUMS (default out: assets/demo-model)
  corpus    write the training corpus and held-out sets as JSONL
  tokenizer train the tokenizer on the corpus
  train     train the model (needs the tokenizer in --out)
  evaluate  evaluate a saved model, write eval.json and the model card
  attacks   RoSais vs random masks and F-SOUR flips on the first AdvBench rows (attacks.json;
            about 4 min on 2 CPU cores for 50 rows of the
            committed model with --workers 2), then rewrite the card
  check     scan the generated corpus for harmful examples with compliant answers

``--smoke`` uses a tiny corpus, a tiny model and a few steps, and writes to a
temporary directory unless --out is given (for CI).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

from explorer.core.paths import DEMO_MODEL_DIR as DEFAULT_OUT  # noqa: E402


def _params(smoke: bool) -> dict:
    if smoke:
        return {"n_examples": 400, "vocab_size": 400, "n_heldout": 8, "adv_sample": 8}
    return {"n_examples": 60000, "vocab_size": 3072, "n_heldout": 200, "adv_sample": None}


def step_corpus(out: Path, seed: int, smoke: bool, log=print):
    """Generate the corpus and held-out set (JSONL in a scratch dir, stats in ``out``); return examples."""
    from explorer.demo import corpus as C

    p = _params(smoke)
    ex = C.generate_corpus(p["n_examples"], seed=seed)
    bad = C.check_corpus(ex)
    if bad:
        raise SystemExit(f"corpus check failed: {bad[:5]}")
    held = C.heldout_examples(p["n_heldout"], p["n_heldout"])
    work = _work(out)
    C.write_jsonl(ex, work / "corpus.jsonl")
    C.write_jsonl(held, work / "heldout.jsonl")
    stats = C.corpus_stats(ex)
    stats["topic_phrases"] = C.catalogue()
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus_stats.json").write_text(json.dumps(stats, indent=2))
    log(f"[corpus] {len(ex)} examples ({stats['harmful']} harmful), {len(held)} held-out -> {work}")
    return ex


def _work(out: Path) -> Path:
    """Scratch dir for the JSONL corpus (kept out of the model folder and the repo)."""
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
    w = Path(tempfile.gettempdir()) / "explorer-demo-work" / key
    w.mkdir(parents=True, exist_ok=True)
    return w


def _load_corpus(out: Path, seed: int, smoke: bool):
    from explorer.demo import corpus as C

    f = _work(out) / "corpus.jsonl"
    return C.read_jsonl(f) if f.exists() else step_corpus(out, seed, smoke)


def step_tokenizer(out: Path, seed: int, smoke: bool, log=print):
    """Train the tokenizer on the corpus and save it into ``out``."""
    from explorer.demo.tokenizer import corpus_texts, train_tokenizer

    ex = _load_corpus(out, seed, smoke)
    tok = train_tokenizer(corpus_texts(ex), out, vocab_size=_params(smoke)["vocab_size"])
    log(f"[tokenizer] vocab {len(tok)} -> {out}")
    return tok


def step_train(out: Path, seed: int, smoke: bool, steps: int | None = None, threads: int | None = None,
               log=print, device: str = "cpu", decision_weight: float | None = None) -> dict:
    """Train the model (tokenizer must already be in ``out``) and save it into ``out``."""
    from transformers import AutoTokenizer

    from explorer.demo.train import SMOKE_CONFIG, TrainConfig, train

    ex = _load_corpus(out, seed, smoke)
    tok = AutoTokenizer.from_pretrained(out)
    cfg = TrainConfig(seed=seed, **(SMOKE_CONFIG if smoke else {}))
    if steps:
        cfg.steps = steps
    if threads:
        cfg.threads = threads
    cfg.device = device
    if decision_weight is not None:
        cfg.decision_weight = decision_weight
    stats = train(ex, tok, out, cfg, log=log)
    (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def step_evaluate(out: Path, smoke: bool, log=print) -> dict:
    """Evaluate the model in ``out``; write ``eval.json``, ``README.md`` and ``SHA256SUMS``."""
    from explorer.demo import corpus as C
    from explorer.demo.evaluate import evaluate_all

    p = _params(smoke)
    work = _work(out)
    held = C.read_jsonl(work / "heldout.jsonl") if (work / "heldout.jsonl").exists() else \
        C.heldout_examples(p["n_heldout"], p["n_heldout"])
    res = evaluate_all(out, held, adv_sample=p["adv_sample"], log=log)
    (out / "eval.json").write_text(json.dumps(res, indent=2))
    rewrite_card(out)
    log(f"[evaluate] {json.dumps(res['summary'])}")
    return res


def rewrite_card(out: Path) -> None:
    """Write the model card and ``SHA256SUMS`` from the JSON files in ``out``."""
    from explorer.demo.evaluate import write_card, write_sha256sums

    res = json.loads((out / "eval.json").read_text())
    extra = {}
    for name in ("corpus_stats.json", "train_stats.json", "attacks.json"):
        f = out / name
        if f.exists():
            extra[name.split(".")[0]] = json.loads(f.read_text())
    write_card(out, res, extra)
    write_sha256sums(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m explorer.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["build", "corpus", "tokenizer", "train", "evaluate", "attacks", "check"])
    ap.add_argument("--out", type=Path, default=None, help=f"output model dir (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (training default 2; use 1 when the CPU is shared, 2 threads on a "
                         "busy 2-core machine are much slower)")
    ap.add_argument("--device", default="cpu", help="training device: cpu (default) or cuda; the recipe "
                    "and its figures are for cpu, and a GPU run gives different weights")
    ap.add_argument("--decision-weight", type=float, default=None,
                    help="train: extra loss weight on the reply's first token (default: the recipe's)")
    ap.add_argument("--rows", type=int, default=50, help="attacks: first N AdvBench rows (default 50)")
    ap.add_argument("--workers", type=int, default=1, help="attacks: F-SOUR processes (default 1)")
    ap.add_argument("--smoke", action="store_true", help="tiny, fast run for CI (temp dir unless --out)")
    a = ap.parse_args(argv)
    out = a.out or (Path(tempfile.mkdtemp(prefix="demo-smoke-")) / "model" if a.smoke else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.command == "check":
        from explorer.demo import corpus as C

        bad = C.check_corpus(C.generate_corpus(_params(a.smoke)["n_examples"], seed=a.seed))
        bad += C.check_corpus(C.heldout_examples())
        print("corpus OK" if not bad else "\n".join(bad[:20]))
        return 1 if bad else 0
    if a.command in ("build", "corpus"):
        step_corpus(out, a.seed, a.smoke)
    if a.command in ("build", "tokenizer"):
        step_tokenizer(out, a.seed, a.smoke)
    if a.command in ("build", "train"):
        step_train(out, a.seed, a.smoke, a.steps, a.threads, device=a.device, decision_weight=a.decision_weight)
    if a.command in ("build", "evaluate"):
        step_evaluate(out, a.smoke)
    if a.command == "attacks":
        from explorer.demo.attacks import write_attacks

        write_attacks(out, rows=8 if a.smoke else a.rows, workers=a.workers)
        if (out / "eval.json").exists():
            rewrite_card(out)
    print(f"[{a.command}] finished in {time.time() - t0:.0f}s; output: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
