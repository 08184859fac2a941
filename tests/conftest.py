"""Shared fixtures and helpers: a tiny local checkpoint with the demo tokenizer, the demo
model, evaluate result files, and chromium and a screenshot folder for the browser tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]  # the checkout (assets, notebooks, app.py)
# The tests import the installed package (`pip install -e ".[dev]"`, as requirements-dev.txt
# does); pytest puts this folder on sys.path for the helper modules (tiny_models, ...).

# tiny models gain nothing from intra-op threads; one thread avoids oversubscription
TEST_THREADS = int(os.environ.get("EXPLORER_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _test_threads():
    """Every test starts with the tests' thread count: in-process CLI calls (``main``) set
    torch's threads for the whole process, which would otherwise leak into later tests."""
    torch.set_num_threads(TEST_THREADS)
    yield


def shared_data() -> Path | None:
    """../shared/data (or $EXPLORER_SHARED_DATA) when present, else None."""
    env = os.environ.get("EXPLORER_SHARED_DATA")
    cands = [Path(env)] if env else []
    cands += [ROOT.parent / "shared" / "data", ROOT / "shared" / "data"]
    return next((c for c in cands if (c / "advbench_harmful_behaviors.csv").exists()), None)


def _fetch_tokenizers():
    """``scripts/fetch_tokenizers.py`` as a module (the home of the packages' pins and of
    the cache folder's default)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("fetch_tokenizers",
                                                  ROOT / "scripts" / "fetch_tokenizers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch_tokenizers = _fetch_tokenizers()


def real_tokenizer_dir(name: str) -> Path:
    """The cached folder of real tokenizer ``name`` (a key of ``fetch_tokenizers.PACKAGES``:
    ``tokenizer.json`` and ``tokenizer_config.json``), from ``$EXPLORER_TOKENIZER_CACHE`` or
    the default cache; skips the test when it has not been fetched."""
    folder = fetch_tokenizers.cached(name)
    if folder is None:
        pytest.skip(f"real tokenizers not fetched: run python scripts/fetch_tokenizers.py "
                    f"(no {name} in {fetch_tokenizers.cache_dir()})")
    return folder


def save_tiny_olmoe(folder: Path, **overrides) -> Path:
    """Save a tiny random OLMoE with the demo tokenizer into ``folder`` (its config fields
    ``overrides``, e.g. ``norm_topk_prob=True``); returns ``folder``."""
    from transformers import AutoTokenizer, OlmoeConfig, OlmoeForCausalLM
    tok = AutoTokenizer.from_pretrained(ROOT / "assets" / "demo-model")
    kw = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=32,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
              num_experts=8, num_experts_per_tok=2, max_position_embeddings=512,
              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
              bos_token_id=tok.bos_token_id)
    kw.update(overrides)
    cfg = OlmoeConfig(**kw)
    torch.manual_seed(0)
    model = OlmoeForCausalLM(cfg)
    for layer in model.model.layers:  # zero-init routers would route every token alike
        torch.nn.init.normal_(layer.mlp.gate.weight, std=0.5)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny random OLMoE saved as a local checkpoint folder, with the demo tokenizer
    (``norm_topk_prob`` False, OLMoE's default: gate weights are not renormalised)."""
    return save_tiny_olmoe(tmp_path_factory.mktemp("tiny") / "tiny-olmoe")


@pytest.fixture(scope="session")
def tiny(tiny_ckpt):
    from explorer import load_model
    return load_model(str(tiny_ckpt), device="cpu")


@pytest.fixture(scope="session")
def tiny_norm(tmp_path_factory):
    """The tiny OLMoE with ``norm_topk_prob=True``: its top-k gate weights sum to 1."""
    from explorer import load_model
    folder = save_tiny_olmoe(tmp_path_factory.mktemp("tiny-norm") / "tiny-olmoe-norm",
                             norm_topk_prob=True)
    return load_model(str(folder), device="cpu")


@pytest.fixture(scope="session")
def demo():
    from explorer import DEMO_MODEL_DIR, load_model
    if not (DEMO_MODEL_DIR / "model.safetensors").exists():
        pytest.skip("demo model not built")
    return load_model()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (real checkpoints, long runs) run only with EXPLORER_SLOW=1."""
    if os.environ.get("EXPLORER_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set EXPLORER_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


#: The categories of the project's first three harmful prompts in :func:`evaluate_own_prompts`.
OWN_CATEGORIES = ("burglary", "weapons", "fraud")


def evaluate_own_prompts(moe, folder: Path, max_new_tokens: int,
                         methods=("none", "fsour")) -> tuple[Path, ...]:
    """Run ``evaluate`` on ``moe`` over the project's first three harmful prompts, from a CSV
    ``folder/own.csv`` with a category column (:data:`OWN_CATEGORIES`), once per method of
    ``methods`` (``"none"``: no attack; ``"fsour"``: 4 candidates, one iteration); returns
    the result files ``folder/<method>.jsonl`` in that order."""
    import csv

    from explorer.core.prompt_sets import HARMFUL_PROMPTS
    from explorer.evaluation.datasets import load_dataset_rows
    from explorer.evaluation.evaluate import evaluate
    data = folder / "own.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["goal", "target", "category"])
        for goal, category in zip(HARMFUL_PROMPTS[:3], OWN_CATEGORIES):
            w.writerow([goal, "Sure, here is", category])
    rows = load_dataset_rows(data)
    options = {"fsour": dict(candidates=4, max_iters=1)}
    for method in methods:
        evaluate(moe, rows, method, out=folder / f"{method}.jsonl",
                 max_new_tokens=max_new_tokens, **options.get(method, {}))
    return tuple(folder / f"{method}.jsonl" for method in methods)


@pytest.fixture(scope="module")
def browser():
    """A headless chromium for the module's browser tests (``browser_support.chromium``;
    the module calls ``browser_support.need_browser`` first)."""
    from browser_support import chromium
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the browser tests' screenshots go: ``$EXPLORER_SCREENSHOTS`` when set, else a
    temporary folder."""
    from browser_support import screenshot_dir
    return screenshot_dir() or tmp_path_factory.mktemp("screenshots")


class FakeClock:
    """A stand-in for ``time.monotonic`` (seconds) that stands still until a test moves it
    with :meth:`advance`: pass it as ``clock=`` (e.g. to ``HostedPolicy``) so that rate
    buckets refill exactly when the test says, without sleeping."""

    def __init__(self, start: float = 1000.0):
        self.t = float(start)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` on (never back: it is monotonic); returns the time."""
        assert seconds >= 0, f"a monotonic clock does not go back ({seconds} s)"
        self.t += seconds
        return self.t


def closed_port() -> int:
    """A localhost TCP port nothing listens on (for unreachable-endpoint tests)."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


from explorer.judges import NeverJudge  # noqa: E402,F401  (tests import it from here)


def ui_handler(demo, elem_id: str, event: str = "click"):
    """The view wired to ``event`` of the app component with ``elem_id``, run through the
    app's gate as an endpoint would be (admitted; refusals raise one-line ``gr.Error``
    here; the browser tests check the toasts). It takes the view's values, not the Visit."""
    block = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    fns = [f for f in demo.fns.values() if (block._id, event) in
           [(t[0], t[1]) for t in f.targets]]
    assert len(fns) == 1, f"{elem_id}.{event}: {len(fns)} handlers"
    view = fns[0].fn.__view__
    return lambda *args: demo.explorer.gate.call(view, *args)
