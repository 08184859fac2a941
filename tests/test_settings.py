"""The one settings object: what it reads from the environment, how it reports bad values,
and that every variable it reads is listed (and the user-facing ones documented)."""

from __future__ import annotations

import os
import re

import pytest
import torch
from conftest import ROOT

from explorer.cli.main import main
from explorer.engine.tuning import Tuning, active_tuning
from explorer.settings import ENVIRONMENT, Settings


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.host, s.port, s.device, s.model_cache, s.debug) == ("127.0.0.1", 7860, "auto",
                                                                 True, False)
    assert s.tuning == Tuning() and s.experts_impl is None and s.policy is None


def test_values_and_precedence():
    s = Settings.from_env({"EXPLORER_MODEL": "org/m", "GRADIO_SERVER_NAME": "0.0.0.0",
                           "GRADIO_SERVER_PORT": "9000", "EXPLORER_MAX_PROMPT_TOKENS": "64",
                           "EXPLORER_MODEL_CACHE": "0", "EXPLORER_CONE_NARROW": "0",
                           "EXPLORER_BATCH_MEMORY_SHARE": "0.5", "WORLD_SIZE": "4",
                           "RANK": "3", "MASTER_ADDR": "h", "MASTER_PORT": "1",
                           "HF_DATASETS_OFFLINE": "1", "EXPLORER_THREADS": "2"})
    assert (s.model, s.host, s.port, s.max_prompt_tokens, s.model_cache) == (
        "org/m", "0.0.0.0", 9000, 64, False)
    assert s.tuning == Tuning(narrow=False, memory_share=0.5)
    assert (s.rank, s.world_size, s.local_rank, s.hub_offline, s.threads) == (3, 4, 3, True, 2)
    assert Settings.from_env({"EXPLORER_HOST": "a", "GRADIO_SERVER_NAME": "b"}).host == "a"
    assert Settings.from_env({"SPACE_ID": "x/y"}).host == "0.0.0.0"
    # flags win over the environment; unset flags (None) keep it
    s = Settings.from_env({"EXPLORER_PORT": "1234"}, port=None, device="cpu")
    assert (s.port, s.device) == (1234, "cpu")


@pytest.mark.parametrize("name,value", [
    ("EXPLORER_MAX_PROMPT_TOKENS", "0"), ("EXPLORER_MAX_PROMPT_TOKENS", "many"),
    ("EXPLORER_PORT", "http"), ("EXPLORER_CONE_DIRECT", "yes"),
    ("EXPLORER_BATCH_MEMORY_SHARE", "2"), ("EXPLORER_THREADS", "-1"),
    ("EXPLORER_DIST_TIMEOUT", "soon"), ("WORLD_SIZE", "two")])
def test_bad_values_name_their_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_secrets_stay_hidden_and_judge_options():
    s = Settings.from_env({"OPENAI_API_KEY": "sk-secret", "EXPLORER_JUDGE_MODEL": "m"})
    assert "sk-secret" not in repr(s) and "sk-secret" not in str(s.to_dict())
    assert s.judge_options("rubric") == {"base_url": "https://api.openai.com/v1",
                                         "model": "m", "api_key": "sk-secret"}
    assert s.judge_options("keyword") == {}


def test_the_cli_applies_threads_and_tuning(monkeypatch):
    import explorer.cli.main as cli
    seen = {}

    def probe(args):
        seen.update(threads=torch.get_num_threads(), tuning=active_tuning())
    monkeypatch.setitem(cli.COMMANDS, "info", (lambda p: None, probe, "probe"))
    before = torch.get_num_threads()
    try:
        assert main(["info"], settings=Settings(threads=2, tuning=Tuning(direct=False))) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": 2, "tuning": Tuning(direct=False)}
    assert active_tuning() == Tuning()  # only inside the command


def test_every_variable_is_listed_and_user_ones_documented():
    src = (ROOT / "explorer" / "settings.py").read_text()
    read = set(re.findall(r'g\("([A-Z_]+)"\)', src))
    listed = {name for name, *_ in ENVIRONMENT}
    assert read <= listed, sorted(read - listed)
    readme = (ROOT / "README.md").read_text()
    documented = readme + (ROOT / "docs" / "configuration.md").read_text()  # the README links it
    assert "docs/configuration.md" in readme
    users = {name for name, _, who, _ in ENVIRONMENT if who == "user"}
    missing = sorted(n for n in users if n not in documented)
    assert not missing, missing
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    for name, _, who, _ in ENVIRONMENT:
        if who == "contributor":
            assert name in contributing and name not in readme


def test_thread_defaults_follow_flags_then_omp_then_physical_cores(monkeypatch):
    from explorer.settings import physical_cores
    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert Settings().thread_count() == cores
    assert Settings(omp_threads="3").thread_count() == 3
    assert Settings(omp_threads="junk").thread_count() == cores
    assert Settings(threads=5, omp_threads="3").thread_count() == 5
    import explorer.cli.main as cli
    seen = {}
    monkeypatch.setitem(cli.COMMANDS, "info", (
        lambda p: p.add_argument("--threads", type=int),
        lambda args: seen.update(threads=torch.get_num_threads()), "probe"))
    before = torch.get_num_threads()
    try:
        assert main(["info", "--threads", "1"], settings=Settings(threads=2)) == 0
        assert seen["threads"] == 1  # the flag over the environment
        assert main(["info"], settings=Settings()) == 0
        assert seen["threads"] == cores  # neither: the physical cores
    finally:
        torch.set_num_threads(before)


def test_help_answers_without_torch():
    import subprocess
    import sys
    code = ("import sys; from explorer.cli.main import main; rc = main(['--help']); "
            "rc2 = main(['bench', '--help']); "
            "print(rc, rc2, [m for m in ('torch', 'transformers', 'gradio') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "0 0 []", out.stderr
