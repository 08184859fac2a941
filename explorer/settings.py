"""One settings object for the entry points (``app.py``, the CLI, the demo tools).

:class:`Settings` is read from the environment (and, by the entry points, from flags)
once, at the edge, and passed down as plain keyword arguments: nothing below the entry
points reads the environment. :data:`ENVIRONMENT` lists every variable, the field it
fills and who uses it; ``Settings.from_env`` is the only reader.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from explorer.core.defaults import GPU_CHUNK_SECONDS
from explorer.core.errors import InputError
from explorer.core.quantize import QUANTIZE_MODES, parse_quantize
from explorer.engine.tuning import Tuning


def _optional_flag(name: str, text: str) -> bool | None:
    t = text.strip()
    if not t:
        return None
    if t not in ("0", "1"):
        raise InputError(f"{name} must be 0 or 1, got {text!r}")
    return t == "1"


def _positive_int(name: str, text: str) -> int | None:
    t = text.strip()
    if not t:
        return None
    try:
        v = int(t)
    except ValueError:
        v = 0
    if v <= 0:
        raise InputError(f"{name} must be a positive integer, got {text!r}")
    return v


def _int(name: str, text: str, default: int) -> int:
    t = text.strip()
    if not t:
        return default
    try:
        return int(t)
    except ValueError:
        raise InputError(f"{name} must be an integer, got {text!r}") from None


def _quantize(name: str, text: str) -> str | None:
    try:
        return parse_quantize(text)
    except InputError:
        raise InputError(f"{name} must be one of {', '.join(QUANTIZE_MODES)} (or empty), "
                         f"got {text!r}") from None


def _fraction(name: str, text: str) -> float | None:
    t = text.strip()
    if not t:
        return None
    try:
        v = float(t)
    except ValueError:
        v = -1.0
    if not 0.0 < v <= 1.0:
        raise InputError(f"{name} must be a number in (0, 1], got {text!r}")
    return v


#: ``(variable, Settings field, audience, meaning)`` for every variable the project reads.
#: Audience: ``user`` (documented in the README), ``host`` (hosted mode, read by
#: :meth:`explorer.app.hosted.HostedPolicy.from_env` from the same mapping),
#: ``launcher`` (torchrun / accelerate), ``contributor`` (internal tuning switches).
ENVIRONMENT: tuple[tuple[str, str, str, str], ...] = (
    ("EXPLORER_MODEL", "model", "user", "app: the model to load (hub id or folder)"),
    ("EXPLORER_HOST", "host", "user", "app: the address to listen on"),
    ("GRADIO_SERVER_NAME", "host", "user", "app: the address (when EXPLORER_HOST is unset)"),
    ("EXPLORER_PORT", "port", "user", "app: the port"),
    ("GRADIO_SERVER_PORT", "port", "user", "app: the port (when EXPLORER_PORT is unset)"),
    ("SPACE_ID", "on_spaces", "user", "app: set on Hugging Face Spaces (listen on 0.0.0.0)"),
    ("EXPLORER_DATA_DIR", "data_dir", "user", "route library folder"),
    ("EXPLORER_DEVICE", "device", "user", "app: auto | cpu | cuda[:N]"),
    ("EXPLORER_QUANTIZE", "quantize", "user", "app: 8bit | 4bit weights (bitsandbytes, GPU)"),
    ("EXPLORER_GPU_CHUNK_SECONDS", "gpu_chunk_seconds", "user",
     "app on ZeroGPU: seconds of each GPU window a background search runs in"),
    ("EXPLORER_MAX_PROMPT_TOKENS", "max_prompt_tokens", "user",
     "cap on templated prompt tokens"),
    ("EXPLORER_JUDGE_URL", "judge_url", "user", "rubric judge: OpenAI-compatible base URL"),
    ("EXPLORER_JUDGE_MODEL", "judge_model", "user", "rubric judge: model name"),
    ("EXPLORER_JUDGE_API_KEY", "judge_api_key", "user", "rubric judge: API key"),
    ("OPENAI_API_KEY", "openai_api_key", "user", "rubric judge: key (and URL default)"),
    ("EXPLORER_MODEL_CACHE", "model_cache", "user", "CLI: 0 turns the in-process model "
     "cache off"),
    ("EXPLORER_DEBUG", "debug", "user", "CLI: let internal errors raise with a traceback"),
    ("EXPLORER_THREADS", "threads", "user", "torch threads (CLI, app, notebook)"),
    ("EXPLORER_PLUGINS", "plugins", "user", "comma-separated modules that register attacks or "
     "judges, imported by the CLI and the app at start"),
    ("EXPLORER_SHARED_DATA", "shared_data", "user", "benchmark CSV folder"),
    ("HF_HUB_OFFLINE", "hub_offline", "user", "never try the hub for datasets"),
    ("HF_DATASETS_OFFLINE", "hub_offline", "user", "never try the hub for datasets"),
    ("EXPLORER_HOSTED", "policy", "host", "hosted mode on (1)"),
    ("EXPLORER_MODEL_ALLOWLIST", "policy", "host", "hosted mode: hub ids users may load"),
    ("EXPLORER_HOSTED_*", "policy", "host", "hosted mode limits (see explorer.app.hosted)"),
    ("RANK", "rank", "launcher", "evaluate: this process's rank"),
    ("WORLD_SIZE", "world_size", "launcher", "evaluate: number of processes"),
    ("LOCAL_RANK", "local_rank", "launcher", "evaluate: rank on this node (GPU index)"),
    ("LOCAL_WORLD_SIZE", "local_world_size", "launcher", "evaluate: processes on this node"),
    ("MASTER_ADDR", "master_addr", "launcher", "evaluate: process group address"),
    ("MASTER_PORT", "master_port", "launcher", "evaluate: process group port"),
    ("EXPLORER_DIST_TIMEOUT", "dist_timeout", "launcher", "evaluate: barrier timeout (s)"),
    ("OMP_NUM_THREADS", "omp_threads", "launcher", "evaluate: left alone when set"),
    ("EXPLORER_CONE_NARROW", "tuning", "contributor", "fast engine: narrow step (0/1)"),
    ("EXPLORER_CONE_DIRECT", "tuning", "contributor", "fast engine: direct cone (0/1)"),
    ("EXPLORER_BATCH_MEMORY_SHARE", "tuning", "contributor", "share of free memory per batch"),
    ("EXPLORER_EXPERTS_IMPL", "experts_impl", "contributor", "CPU experts kernel"),
)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (its affinity mask, one per
    core however many hardware threads it has; capped by a cgroup CPU quota), at least 1."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/topology/"
        try:
            with open(base + "physical_package_id") as f1, open(base + "core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            cores.add(("cpu", str(c)))
    n = max(1, len(cores))
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


@dataclass(frozen=True)
class Settings:
    """Every setting the entry points take from the environment or flags.

    Build it with :meth:`from_env` (then :func:`dataclasses.replace` for flags) and pass
    its fields down; :meth:`to_dict` gives a printable copy with secrets hidden.
    """

    # the app
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    on_spaces: bool = False
    device: str = "auto"
    quantize: str | None = None  # "8bit" | "4bit" (bitsandbytes), None: full precision
    gpu_chunk_seconds: int = GPU_CHUNK_SECONDS
    policy: Any = None  # explorer.app.hosted.HostedPolicy (app.py builds it)
    # library-wide
    data_dir: str | None = None
    max_prompt_tokens: int | None = None
    shared_data: str | None = None
    hub_offline: bool = False
    threads: int | None = None
    plugins: tuple[str, ...] = ()  # modules that register attacks or judges when imported
    judge_url: str | None = None
    judge_model: str | None = None
    judge_api_key: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    # the CLI
    model_cache: bool = True
    debug: bool = False
    # process layout (torchrun / accelerate) for evaluate
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int | None = None
    master_addr: str | None = None
    master_port: str | None = None
    dist_timeout: float = 7 * 24 * 3600.0
    omp_threads: str | None = None
    # internal tuning switches (contributors; see CONTRIBUTING.md)
    tuning: Tuning = field(default_factory=Tuning)
    experts_impl: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags) -> "Settings":
        """The settings ``env`` describes (``os.environ`` by default), then ``flags`` that
        are not None (field names). Malformed values raise ``ValueError`` with the
        variable's name. The hosted-mode policy is the app's: ``app.py`` builds it with
        :meth:`explorer.app.hosted.HostedPolicy.from_env` from the same mapping and
        passes it as the ``policy`` flag."""
        env = os.environ if env is None else env
        g = lambda name: env.get(name, "") or ""  # noqa: E731
        host = g("EXPLORER_HOST") or g("GRADIO_SERVER_NAME") or (
            "0.0.0.0" if g("SPACE_ID") else "127.0.0.1")
        port = _int("EXPLORER_PORT", g("EXPLORER_PORT") or g("GRADIO_SERVER_PORT"), 7860)
        world = _int("WORLD_SIZE", g("WORLD_SIZE"), 1)
        rank = _int("RANK", g("RANK") or g("LOCAL_RANK"), 0)
        local = _int("LOCAL_RANK", g("LOCAL_RANK"), rank)
        timeout = g("EXPLORER_DIST_TIMEOUT").strip()
        try:
            dist_timeout = float(timeout) if timeout else 7 * 24 * 3600.0
        except ValueError:
            raise InputError(f"EXPLORER_DIST_TIMEOUT must be a number of seconds, "
                             f"got {timeout!r}") from None
        return cls(
            model=g("EXPLORER_MODEL") or None, host=host, port=port,
            on_spaces=bool(g("SPACE_ID")), device=g("EXPLORER_DEVICE") or "auto",
            quantize=_quantize("EXPLORER_QUANTIZE", g("EXPLORER_QUANTIZE")),
            gpu_chunk_seconds=_positive_int("EXPLORER_GPU_CHUNK_SECONDS",
                                            g("EXPLORER_GPU_CHUNK_SECONDS"))
            or GPU_CHUNK_SECONDS,
            policy=None,
            data_dir=g("EXPLORER_DATA_DIR") or None,
            max_prompt_tokens=_positive_int("EXPLORER_MAX_PROMPT_TOKENS",
                                            g("EXPLORER_MAX_PROMPT_TOKENS")),
            shared_data=g("EXPLORER_SHARED_DATA") or None,
            hub_offline=g("HF_HUB_OFFLINE") == "1" or g("HF_DATASETS_OFFLINE") == "1",
            threads=_positive_int("EXPLORER_THREADS", g("EXPLORER_THREADS")),
            plugins=tuple(m.strip() for m in g("EXPLORER_PLUGINS").split(",") if m.strip()),
            judge_url=g("EXPLORER_JUDGE_URL") or None,
            judge_model=g("EXPLORER_JUDGE_MODEL") or None,
            judge_api_key=g("EXPLORER_JUDGE_API_KEY") or None,
            openai_api_key=g("OPENAI_API_KEY") or None,
            model_cache=g("EXPLORER_MODEL_CACHE").strip() != "0",
            debug=bool(g("EXPLORER_DEBUG")),
            rank=rank, world_size=world, local_rank=local,
            local_world_size=(_int("LOCAL_WORLD_SIZE", g("LOCAL_WORLD_SIZE"), world)
                              if g("LOCAL_WORLD_SIZE") else None),
            master_addr=g("MASTER_ADDR") or None, master_port=g("MASTER_PORT") or None,
            dist_timeout=dist_timeout, omp_threads=g("OMP_NUM_THREADS") or None,
            tuning=Tuning(narrow=_optional_flag("EXPLORER_CONE_NARROW", g("EXPLORER_CONE_NARROW")),
                          direct=_optional_flag("EXPLORER_CONE_DIRECT", g("EXPLORER_CONE_DIRECT")),
                          memory_share=_fraction("EXPLORER_BATCH_MEMORY_SHARE",
                                                 g("EXPLORER_BATCH_MEMORY_SHARE"))),
            experts_impl=g("EXPLORER_EXPERTS_IMPL").strip() or None).replace(**flags)

    def replace(self, **changes) -> "Settings":
        """A copy with ``changes`` (None values are ignored: an unset flag keeps the
        environment's value)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def thread_count(self) -> int:
        """Torch intra-op threads for this process: :attr:`threads` (``--threads`` /
        ``EXPLORER_THREADS``), else ``OMP_NUM_THREADS``, else the physical cores it may run
        on (:func:`physical_cores`). More threads than cores spin against each other: a
        search on a loaded 2-core machine took 29.4 s at torch's default, 4.2 s at one."""
        if self.threads:
            return self.threads
        try:
            omp = int(self.omp_threads) if self.omp_threads else 0
        except ValueError:
            omp = 0
        return omp if omp > 0 else physical_cores()

    def apply_threads(self) -> int:
        """Set torch's intra-op threads to :meth:`thread_count` (entry points call this
        once, before any model work); returns the count."""
        import torch
        n = self.thread_count()
        torch.set_num_threads(n)
        return n

    def judge_options(self, name: str) -> dict[str, Any]:
        """Constructor options for the judge ``name`` from these settings (the rubric
        judge's endpoint, model and key; the OpenAI API when only its key is set)."""
        if name != "rubric":
            return {}
        url = self.judge_url or ("https://api.openai.com/v1" if self.openai_api_key else None)
        opts = {"base_url": url, "model": self.judge_model,
                "api_key": self.judge_api_key or self.openai_api_key}
        return {k: v for k, v in opts.items() if v}

    @classmethod
    def environment(cls) -> Mapping[str, str]:
        """The process environment, for entry points that pass one mapping to several
        readers (``app.py`` gives it to :meth:`from_env` and the hosted policy)."""
        return os.environ

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data, API keys shown only as set / not set."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("api_key"):
                v = "set" if v else None
            elif f.name == "policy":
                v = v.to_dict() if v is not None else None
            elif f.name == "tuning":
                v = dataclasses.asdict(v)
            out[f.name] = v
        return out
