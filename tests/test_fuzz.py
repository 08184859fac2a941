"""Property-based tests (hypothesis): route JSON parsing and validation, and the CLI.

The CLI contract under test (see :mod:`explorer.cli.main`): ``main(argv)`` returns 0 on
success and 2 on bad input (then stderr is exactly one ``error: ...`` line); 1 would be an
internal error, and with ``EXPLORER_DEBUG=1`` (set here) an internal error raises
instead, so hypothesis reports it with its traceback. Every CLI example runs in-process
against the tiny checkpoint under a watchdog (SIGALRM) that turns a hang into a failure;
inputs stay cheap (most are refused before any model work; generation, search and
sample budgets are capped at 1-2). ``test_cli_example_count`` proves that at least
1000 CLI inputs ran.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import signal
import string
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import closed_port
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from explorer.cli import main as cli
from explorer.cli.main import main
from explorer.core.errors import InputError
from explorer.core.layers import LayerInfo
from explorer.core.model import ModelInfo
from explorer.core.route import Route, RouteEdit, RouteError

COUNTS: collections.Counter = collections.Counter()
CLI_TESTS = ("soup", "prompts", "routes", "datasets")
PROMPT_CAP = 48  # EXPLORER_MAX_PROMPT_TOKENS while fuzzing: long prompts fail fast
HANG_SECONDS = 60

FUZZ = dict(deadline=timedelta(seconds=20), database=None, print_blob=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture,
                                   HealthCheck.too_slow, HealthCheck.data_too_large])


# -- route JSON ---------------------------------------------------------------------------
json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | \
    st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)
small = st.integers(-2, 10)
edit_like = st.dictionaries(
    st.sampled_from(["layer", "position", "experts", "mode", "weight", ""]),
    st.one_of(small, st.none(), st.lists(small, max_size=4), st.sampled_from(
        ["force", "mask", "swap"]), json_scalars), max_size=5)
route_like = st.one_of(
    json_values,
    st.fixed_dictionaries({"edits": st.lists(edit_like, max_size=4)},
                          optional={"info": json_values}),
    st.fixed_dictionaries({"edits": st.lists(st.fixed_dictionaries(
        {"layer": small, "experts": st.lists(small, max_size=4)},
        optional={"position": st.none() | small, "mode": st.sampled_from(["force", "mask"])}),
        max_size=4)}, optional={"info": st.dictionaries(st.text(max_size=5),
                                                          json_scalars, max_size=3)}))


def _synthetic_info() -> ModelInfo:
    """A model with a dense layer and a group-limited router (DeepSeek style)."""
    return ModelInfo(name="synthetic", model_type="deepseek_v3", num_layers=3, layers=[
        LayerInfo(0, False),
        LayerInfo(1, True, num_experts=8, top_k=2, router_kind="sigmoid-group"),
        LayerInfo(2, True, num_experts=16, top_k=4, router_kind="sigmoid-group",
                  n_group=4, topk_group=2)])


def _check_valid(route: Route, info: ModelInfo, num_tokens: int | None) -> None:
    """What a route that passed validate() must satisfy (an independent restatement)."""
    by = {lay.index: lay for lay in info.layers}
    for e in route.edits:
        lay = by[e.layer]
        assert lay.is_moe and all(0 <= x < lay.num_experts for x in e.experts)
        if e.position is not None:
            assert 0 <= e.position and (num_tokens is None or e.position < num_tokens)
        if e.mode == "force":
            assert len(e.experts) == lay.top_k
        for pos in {d.position for d in route.edits if d.layer == e.layer}:
            assert len(route.allowed(e.layer, pos, lay.num_experts)) >= lay.top_k


@settings(max_examples=250, **FUZZ)
@given(data=route_like)
def test_route_from_dict_only_raises_route_error(data, tiny):
    try:
        route = Route.from_dict(data)
    except RouteError:
        return
    text = route.to_json()
    again = Route.from_json(text)
    assert again.to_json() == text
    if "NaN" not in text:  # NaN != NaN: compare the JSON instead
        assert again == route
    for info, n in ((tiny.info, None), (tiny.info, 12), (_synthetic_info(), None)):
        try:
            route.validate(info, num_tokens=n)
        except RouteError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            _check_valid(route, info, n)


valid_json = json.dumps({"edits": [{"layer": 1, "position": 3, "experts": [2, 5],
                                    "mode": "force"}], "info": {"model": "x"}})


@settings(max_examples=300, **FUZZ)
@given(text=st.one_of(st.text(max_size=60), st.binary(max_size=40),
                      st.tuples(st.integers(0, len(valid_json)), st.integers(0, 8),
                                st.text(string.printable, max_size=4)).map(
                          lambda t: valid_json[:t[0]] + t[2] + valid_json[t[0] + t[1]:]),
                      st.integers(1, 60_000).map(lambda n: "[" * n + "]" * (n % 7))))
def test_route_from_json_only_raises_route_error(text):
    try:
        route = Route.from_json(text)
    except RouteError as exc:
        assert str(exc)
        return
    assert Route.from_json(route.to_json()).to_json() == route.to_json()


edits = st.builds(lambda layer, pos, experts, mode: (layer, pos, experts, mode),
                  st.integers(-1, 3), st.none() | st.integers(-1, 20),
                  st.lists(st.integers(-1, 17), min_size=1, max_size=5),
                  st.sampled_from(["force", "mask"]))


@settings(max_examples=300, **FUZZ)
@given(raw=st.lists(edits, max_size=5), which=st.sampled_from(["tiny", "synthetic"]),
       num_tokens=st.none() | st.integers(1, 25))
def test_random_edits_validate_or_route_error(raw, which, num_tokens, tiny):
    info = tiny.info if which == "tiny" else _synthetic_info()
    route = Route(info={"model": which})
    for layer, pos, experts, mode in raw:
        try:
            route.edits.append(RouteEdit(layer, pos, tuple(experts), mode))
        except RouteError:
            pass  # e.g. an expert listed twice
    try:
        route.validate(info, num_tokens=num_tokens)
    except RouteError as exc:
        assert str(exc)
        valid = False
    else:
        _check_valid(route, info, num_tokens)
        valid = True
    again = Route.from_json(route.to_json())
    assert again == route  # valid or not, the JSON round-trips exactly
    if valid:
        again.validate(info, num_tokens=num_tokens)


@settings(max_examples=40, **FUZZ)
@given(raw=st.lists(edits, min_size=1, max_size=4))
def test_validated_routes_apply_as_promised(raw, tiny):
    """A route that validates against the tiny model runs, and the model only uses
    experts the route allows at every layer and position."""
    from explorer.core.trace import trace
    prompt = "Tell me a joke"
    n = len(tiny.encode(prompt))
    route = Route()
    for layer, pos, experts, mode in raw:
        try:
            route.edits.append(RouteEdit(layer % 2, None if pos is None else pos % (n + 2),
                                         tuple(x % 9 for x in experts), mode))
        except RouteError:
            pass
    try:
        route.validate(tiny.info, num_tokens=n)
    except RouteError:
        return
    tr = trace(tiny, prompt, max_new_tokens=2, route=route, record_logits=False)
    for i, layer in enumerate(tr.moe_layers):
        for t in range(tr.num_tokens):
            pos = t if t < n else None
            allowed = route.allowed(layer, t, 8) if pos is not None else \
                route.allowed(layer, -1, 8)  # generated tokens: only position-free edits
            assert set(tr.experts[i][t]) <= allowed, (layer, t)


# -- the CLI ------------------------------------------------------------------------------
class Hang(BaseException):
    """Raised by the watchdog; a BaseException so that main() cannot swallow it."""


@contextlib.contextmanager
def watchdog(seconds: float):
    def fire(signum, frame):
        raise Hang(f"a CLI call ran longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with watchdog(HANG_SECONDS), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def check_contract(rc: int, out: str, err: str) -> None:
    """Exit 0 or 2; a refusal is one `error:` line; never a traceback."""
    assert "Traceback" not in err and "Traceback" not in out
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert len(err.splitlines()) == 1 and err.startswith("error: "), repr(err)
    else:
        assert "error:" not in err, repr(err)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_ckpt):
    """A workspace (the current folder while fuzzing) with input files, and an
    environment that keeps every CLI call local and cheap."""
    import huggingface_hub.constants as hub_constants
    root = tmp_path_factory.mktemp("fuzz")
    (root / "data").mkdir()
    (root / "out").mkdir()
    (root / "notamodel").mkdir()
    closed = _closed_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("EXPLORER_DEBUG", "1")
        mp.setenv("EXPLORER_MAX_PROMPT_TOKENS", str(PROMPT_CAP))
        mp.setenv("EXPLORER_DATA_DIR", str(root / "data"))
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        for var in ("EXPLORER_JUDGE_URL", "EXPLORER_JUDGE_MODEL", "EXPLORER_JUDGE_API_KEY",
                    "OPENAI_API_KEY", "EXPLORER_MODEL_CACHE", "RANK", "WORLD_SIZE"):
            mp.delenv(var, raising=False)
        assert run(["info", "--model", str(tiny_ckpt)])[0] == 0  # warm the model cache
        yield {"root": root, "tiny": str(tiny_ckpt), "url": f"http://127.0.0.1:{closed}/v1"}


_closed_port = closed_port


INPUT_FILES = {  # rewritten before every soup example (commands may write over them)
    "route.json": json.dumps({"edits": [{"layer": 0, "position": 2, "experts": [6, 7],
                                         "mode": "force"}], "info": {"prompt": "Hello there"}}),
    "bad_route.json": json.dumps({"edits": [{"layer": 7, "position": 0, "experts": [1]}]}),
    "not_json.json": "{edits: [",
    "mask.json": json.dumps({"edits": [{"layer": 1, "position": None, "experts": [0, 1],
                                        "mode": "mask"}], "info": {"prompt": "Hi"}}),
    "goals.csv": "goal,target\nSay hello,Sure\nTell a joke,Sure\n",
    "nogoal.csv": "prompt\nhello\n",
    "broken.csv": "goal,target\na,b,c\n",
    "prompts.txt": "Say hello\n# comment\nTell a joke\n",
    "rosais.json": json.dumps({"scores": [1.0, 2.0]}),
}


_STAMPS: dict[str, tuple] = {}


def _restore_inputs(root: Path) -> None:
    """Rewrite the input files that a command changed or removed (stat is cheap here,
    open is not)."""
    for name, text in INPUT_FILES.items():
        p = root / name
        try:
            st_ = p.stat()
            stamp = (st_.st_mtime_ns, st_.st_size, st_.st_ino)
        except OSError:
            stamp = None
        if stamp is None or _STAMPS.get(name) != stamp:
            if p.is_dir():
                import shutil
                shutil.rmtree(p)
            p.write_text(text, encoding="utf-8")
            st_ = p.stat()
            _STAMPS[name] = (st_.st_mtime_ns, st_.st_size, st_.st_ino)


def _all_options() -> list[str]:
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    return sorted({o for p in sub.choices.values() for a in p._actions
                   for o in a.option_strings if o.startswith("--") and o != "--help"})


def _options_of(command: str) -> set[str]:
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    p = sub.choices.get(command)
    return set() if p is None else {o for a in p._actions for o in a.option_strings}


CAPS = {"--max-new-tokens": "2", "--samples": "1", "--candidates": "1", "--max-iters": "1",
        "--limit": "1", "--top": "1", "--max-top": "1", "--derive-limit": "1",
        "--harmful-limit": "1", "--benign-limit": "1", "--heldout-limit": "1",
        "--checks": "1", "--no-reference": None, "--steps": "1", "--rounds": "1",
        "--experts": "1"}
OPTIONS = _all_options()
COMMAND_NAMES = sorted(cli.COMMANDS)
safe_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\~"),
                    max_size=16)
numbers = st.sampled_from(["0", "-1", "1", "2", "3", "-0", "0.5", "1.5", "-0.2", "nan", "inf",
                           "-inf", "1e9", "4294967296", "9" * 30, "0x10", " 2", "١"]) | \
    st.integers(-10**20, 10**20).map(str)
words = st.sampled_from(["keyword", "rubric", "classifier", "fast", "reference", "none",
                         "rosais", "fsour", "harmful", "benign", "set", "cell", "end",
                         "template", "absolute", "cpu", "auto", "cuda", "cuda:1", "float16",
                         "bfloat16", "float32", "advbench", "jbb", "none,rosais", "-", "--",
                         "-h", "--json", "Hello there", "ftp://x/v1", ""])
paths = st.sampled_from(sorted(INPUT_FILES) + ["out/r.json", "out/rows.jsonl", "missing.json",
                                               "notamodel", "out", "/no/such/file", "TINY",
                                               "URL"])
value = st.one_of(numbers, safe_text, words, paths)
token_groups = st.lists(st.one_of(
    st.tuples(st.sampled_from(OPTIONS), value).map(list),
    st.tuples(st.sampled_from(OPTIONS)).map(list),
    st.tuples(value).map(list)), max_size=5).map(lambda groups: sum(groups, []))


def _caps(command: str) -> list[str]:
    have = _options_of(command)
    out: list[str] = []
    for opt, v in CAPS.items():
        if opt in have:
            out += [opt] if v is None else [opt, v]
    if command == "bench":  # it times repeated runs (seconds, by design): its options
        out += ["--seed", "-1"]  # are fuzzed, its run is refused by the seed check
    return out


GOOD = {  # plausible values, so that a fair share of the soup gets past parsing
    "--prompt": ["Hello there", "Tell me a joke"], "--route": ["route.json", "mask.json"],
    "--dataset": ["goals.csv"], "--prompts": ["prompts.txt", "harmful", "benign"],
    "--harmful": ["harmful"], "--benign": ["benign"], "--derive-prompts": ["prompts.txt"],
    "--method": ["none", "rosais", "fsour"], "--judge": ["keyword"], "--target": ["Sure"],
    "--engine": ["fast", "reference"], "--mask-ratio": ["0.25"], "--threshold": ["-0.1"],
    "--seed": ["0", "7"], "--out": ["out/r.json"], "--universal": ["1"],
    "--key": ["set", "cell"], "--mapping": ["end", "template", "absolute"],
    "--attacks": ["none", "none,rosais"], "--defense": ["mask.json"],
    "--min-count": ["1"], "--json": None, "--curve": None, "--no-before": None,
}


def _good_pairs(command: str) -> list[list[str]]:
    have = _options_of(command)
    return [[opt] if vals is None else [opt, v] for opt, vals in GOOD.items() if opt in have
            for v in (vals or [None])]


@settings(max_examples=550, **FUZZ)
@given(command=st.sampled_from(COMMAND_NAMES * 4 + ["", "nosuch", "-h", "--json", "TRACE"]),
       data=st.data())
def test_cli_soup(command, data, ws):
    """Random command lines mixing real option names, plausible values and junk."""
    _restore_inputs(ws["root"])
    good = _good_pairs(command)
    groups = data.draw(st.lists(st.sampled_from(good), max_size=4) if good else st.just([]),
                       label="plausible")
    junk = data.draw(st.one_of(st.just([]), token_groups), label="junk")
    mixed = data.draw(st.permutations(groups + [[t] for t in junk]), label="order")
    subst = {"TINY": ws["tiny"], "URL": ws["url"]}
    tokens = [subst.get(t, t) for g in mixed for t in g]
    argv = ([command] if command else []) + (["--model", ws["tiny"]]
                                             if command in cli.COMMANDS else [])
    argv += tokens + _caps(command)
    note(f"argv = {argv!r}")
    COUNTS["soup"] += 1
    rc, out, err = run(argv)
    check_contract(rc, out, err)
    COUNTS[f"soup rc={rc}"] += 1
    helped = any(t in ("-h", "--help") for t in tokens) or command == "-h"
    if rc == 0 and "--json" in tokens and "--" not in tokens and not helped:
        json.loads(out)  # --json prints exactly one JSON object


prompts = st.one_of(
    st.text(max_size=40),  # any unicode, controls included, no surrogates
    st.text(st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=10),  # controls
    st.text(st.sampled_from(" \t\n\r\x0b\x0c\x85\u2028\u3000"), max_size=6),  # blanks
    st.tuples(st.text(max_size=5), st.characters(min_codepoint=0xD800,
                                                 max_codepoint=0xDFFF)).map("".join),
    st.tuples(st.sampled_from(["word ", "ab", "\u00e9t\u00e9 ", "\U0001F600", "-"]),
              st.integers(1, 4000)).map(lambda t: t[0] * t[1]),  # long
    st.sampled_from(["-h", "--json", "--prompt", "-", "Hello there", "'; DROP TABLE routes;"]),
)
PROMPT_COMMANDS = {
    "trace": ["--max-new-tokens", "1"],
    "rosais": ["--samples", "1", "--top", "1", "--max-new-tokens", "1"],
    "fsour": ["--candidates", "1", "--max-iters", "1", "--max-new-tokens", "1"],
    "replay": ["--route", "route.json", "--max-new-tokens", "1"],
}


def _expected_prompt_error(moe, prompt: str) -> str | None:
    """Why the CLI must refuse ``prompt`` (a fragment of its message), or None."""
    if not prompt.strip():
        return "the prompt is empty"
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode"
    text = moe.template(prompt)  # counted with the tokenizer itself, not moe.encode
    if len(moe.tokenizer(text, add_special_tokens=False)["input_ids"]) > PROMPT_CAP:
        return f"the limit is {PROMPT_CAP} (EXPLORER_MAX_PROMPT_TOKENS)"
    return None


@settings(max_examples=250, **FUZZ)
@given(prompt=prompts, command=st.sampled_from(sorted(PROMPT_COMMANDS)))
def test_cli_prompts(prompt, command, ws, tiny):
    """Any prompt string: exit 0 with the library's own tokenisation, or 2 exactly when
    the prompt is empty, not valid text, or over the token cap."""
    (ws["root"] / "route.json").write_text(INPUT_FILES["route.json"], encoding="utf-8")
    argv = [command, f"--prompt={prompt}", "--model", ws["tiny"], "--json",
            *PROMPT_COMMANDS[command]]
    COUNTS["prompts"] += 1
    rc, out, err = run(argv)
    check_contract(rc, out, err)
    want = _expected_prompt_error(tiny, prompt)
    if want is None:
        assert rc == 0, err
        obj = json.loads(out)
        if command in ("trace", "replay"):
            assert obj["prompt_tokens"] == len(tiny.encode(prompt))
            assert obj["tokens"][:obj["prompt_tokens"]] == tiny.token_strings(
                tiny.encode(prompt))
    else:
        assert rc == 2 and want in err, (want, err)


route_docs = st.fixed_dictionaries(
    {"edits": st.lists(st.fixed_dictionaries(
        {"layer": st.integers(-1, 2), "experts": st.lists(st.integers(-1, 8), min_size=1,
                                                            max_size=3)},
        optional={"position": st.none() | st.integers(-1, 12),
                  "mode": st.sampled_from(["force", "mask", "swap"])}), max_size=4)},
    optional={"info": st.fixed_dictionaries({}, optional={
        "model": st.sampled_from(["someone/other", "TINY"]),
        "chat_template_hash": st.sampled_from(["0123456789abcdef", "TINYHASH"]),
        "prompt": st.text(max_size=10)})})


@settings(max_examples=150, **FUZZ)
@given(doc=st.one_of(route_docs, route_docs.map(json.dumps).flatmap(
    lambda t: st.integers(0, len(t)).map(lambda i: t[:i]))))
def test_cli_routes(doc, ws, tiny):
    """Random route files: the CLI refuses exactly the routes the library refuses (with
    its message, and the provenance note), and otherwise obeys them."""
    if isinstance(doc, dict) and "info" in doc:
        prov = tiny.info.provenance()
        doc["info"] = {k: {"TINY": ws["tiny"], "TINYHASH": prov["chat_template_hash"]}.get(
            v, v) for k, v in doc["info"].items()}
    text = doc if isinstance(doc, str) else json.dumps(doc)
    path = ws["root"] / "fuzz_route.json"
    path.write_text(text, encoding="utf-8")
    prompt = "Hello there"
    COUNTS["routes"] += 1
    rc, out, err = run(["trace", "--prompt", prompt, "--route", str(path), "--model",
                        ws["tiny"], "--max-new-tokens", "1", "--json"])
    check_contract(rc, out, err)
    try:
        route = Route.load(path)
        note_ = route.check_provenance(tiny.info.provenance())
        route.validate(tiny.info, num_tokens=len(tiny.encode(prompt)))
    except RouteError as exc:
        assert rc == 2 and cli.one_line(str(exc)) in err, (str(exc), err)
        return
    assert rc == 0, err
    assert (note_ is not None) == err.startswith("warning: route was made for")
    tr = json.loads(out)
    for i, layer in enumerate(tr["moe_layers"]):
        for t in range(tr["prompt_tokens"]):
            assert set(tr["experts"][i][t]) <= route.allowed(layer, t, 8)


csv_cells = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
csv_docs = st.one_of(
    st.lists(st.lists(csv_cells, min_size=0, max_size=3), max_size=4).map(
        lambda rows: "\n".join(",".join(r) for r in rows)),
    st.tuples(st.sampled_from(["goal", "Goal,Target", "target,goal", "prompt", "goal,,x",
                               "\ufeffgoal"]),
              st.lists(st.lists(csv_cells, min_size=1, max_size=3), max_size=3)).map(
        lambda t: t[0] + "\n" + "\n".join(",".join(r) for r in t[1])),
)


@settings(max_examples=150, **FUZZ)
@given(doc=csv_docs)
def test_cli_datasets(doc, ws, tiny):
    """Random dataset CSVs: evaluate refuses exactly what the loader refuses (naming the
    row), and runs the rest."""
    from explorer.evaluation.datasets import load_dataset_rows
    path = ws["root"] / "fuzz.csv"
    path.write_text(doc, encoding="utf-8")
    COUNTS["datasets"] += 1
    rc, out, err = run(["evaluate", "--dataset", str(path), "--limit", "1", "--model",
                        ws["tiny"], "--max-new-tokens", "1", "--json"])
    check_contract(rc, out, err)
    try:
        rows = load_dataset_rows(str(path), 1)
        tiny.encode(rows[0]["goal"])
    except InputError as exc:  # a bare ValueError would be a bug (status 1)
        assert rc == 2 and cli.one_line(str(exc)) in err, (str(exc), err)
        return
    assert rc == 0, err
    obj = json.loads(out)
    assert obj["n"] == 1 and obj["rows"][0]["goal"] == rows[0]["goal"]


def test_cli_example_count():
    """The CLI fuzz tests above ran at least 1000 generated inputs in all."""
    if not all(COUNTS[k] for k in CLI_TESTS):
        pytest.skip("run the whole file to count the CLI examples")
    total = sum(COUNTS[k] for k in CLI_TESTS)
    print(f"CLI fuzz examples: {total} ({dict(COUNTS)})")
    assert total >= 1000, dict(COUNTS)
    assert COUNTS["soup rc=0"] >= 10 and COUNTS["soup rc=2"] >= 100  # both paths exercised
