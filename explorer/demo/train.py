"""Train the demo OLMoE model from scratch on the generated corpus (CPU, ~20 min).

Loss is computed on assistant tokens only (the reply and its ``<|end|>``).
The model is saved in bfloat16 safetensors with ``save_pretrained`` so that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
work on the output folder.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from explorer.demo.tokenizer import END, format_prompt


@dataclass
class TrainConfig:
    """Model size and optimisation settings (defaults: the bundled demo model)."""

    hidden_size: int = 192
    intermediate_size: int = 192
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_experts: int = 16
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.001
    decision_weight: float = 0.0  # extra loss weight on the reply's first token (the refuse/comply decision)
    steps: int = 1600
    batch_size: int = 48
    lr: float = 3e-3
    min_lr_frac: float = 0.05
    warmup: int = 60
    weight_decay: float = 0.05
    seed: int = 0
    threads: int = 2
    max_len: int = 128
    log_every: int = 25
    device: str = "cpu"  # "cuda" trains on a GPU (same recipe; weights differ from a CPU run)


SMOKE_CONFIG = dict(hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                    num_experts=4, num_experts_per_tok=2, steps=4, batch_size=8, warmup=1, log_every=1, threads=1)


def build_model_config(cfg: TrainConfig, tok):
    """Return the ``OlmoeConfig`` of the demo model for tokenizer ``tok``."""
    from transformers import OlmoeConfig

    return OlmoeConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads, num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.num_experts_per_tok, router_aux_loss_coef=cfg.router_aux_loss_coef,
        max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None, norm_topk_prob=False,
    )


def encode(examples, tok, max_len: int = 128):
    """Tokenize examples into (input_ids, labels) lists; labels are -100 outside the reply."""
    out = []
    for ex in examples:
        p = tok(format_prompt(ex["prompt"], ex.get("system")), add_special_tokens=False).input_ids
        r = tok(ex["response"] + END, add_special_tokens=False).input_ids
        ids = (p + r)[:max_len]
        labels = ([-100] * len(p) + r)[:max_len]
        out.append((ids, labels))
    return out


def _batches(data, batch_size, rng):
    idx = list(range(len(data)))
    rng.shuffle(idx)
    chunk = batch_size * 16  # sort within chunks by length to reduce padding
    batches = []
    for c in range(0, len(idx), chunk):
        part = sorted(idx[c:c + chunk], key=lambda i: len(data[i][0]))
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size] or batches


def _collate(data, batch, pad_id):
    import torch

    n = max(len(data[i][0]) for i in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    lab = torch.full((len(batch), n), -100, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    for r, i in enumerate(batch):
        x, y = data[i]
        ids[r, :len(x)] = torch.tensor(x)
        lab[r, :len(y)] = torch.tensor(y)
        att[r, :len(x)] = 1
    return ids, att, lab


def decision_loss(logits, labels):
    """Mean cross-entropy of each row's first reply token: the token that decides refuse or comply.

    ``labels`` is -100 outside the reply; the first reply token at position j is
    predicted by the logits at position j - 1.
    """
    import torch

    is_reply = labels != -100
    first = is_reply.float().argmax(dim=1)  # index of the first reply token per row
    rows = torch.arange(labels.shape[0], device=labels.device)
    keep = is_reply.any(dim=1) & (first > 0)
    return torch.nn.functional.cross_entropy(logits[rows, first - 1][keep].float(), labels[rows, first][keep])


def train(examples, tok, out_dir, cfg: TrainConfig | None = None, log=print) -> dict:
    """Train on ``examples`` and save model + tokenizer to ``out_dir``. Returns training stats."""
    import torch
    from transformers import GenerationConfig, OlmoeForCausalLM

    cfg = cfg or TrainConfig()
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    data = encode(examples, tok, cfg.max_len)
    mcfg = build_model_config(cfg, tok)
    mcfg._experts_implementation = "eager"
    model = OlmoeForCausalLM(mcfg).to(cfg.device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[train] {n_params / 1e6:.2f}M parameters, {len(data)} examples, {cfg.steps} steps x {cfg.batch_size}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))

    def lr_at(step):
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))

    queue, t0, ema, tokens = [], time.time(), None, 0
    for step in range(cfg.steps):
        if not queue:
            queue = _batches(data, cfg.batch_size, rng)
        ids, att, lab = (x.to(cfg.device) for x in _collate(data, queue.pop(), tok.pad_token_id))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=ids, attention_mask=att, labels=lab, output_router_logits=True)
        loss = out.loss + cfg.decision_weight * decision_loss(out.logits, lab) if cfg.decision_weight else out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += int(att.sum())
        lm = float(out.loss.detach()) - cfg.router_aux_loss_coef * float(out.aux_loss.detach() if out.aux_loss is not None else 0.0)
        ema = lm if ema is None else 0.95 * ema + 0.05 * lm
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.time() - t0
            log(f"[train] step {step + 1}/{cfg.steps} loss {ema:.4f} aux {float(out.aux_loss.detach() if out.aux_loss is not None else 0):.3f} "
                f"lr {lr_at(step):.2e} {el:.0f}s elapsed, eta {el / (step + 1) * (cfg.steps - step - 1):.0f}s")
    secs = time.time() - t0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.config.output_router_logits = False
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               do_sample=False, max_new_tokens=48)
    model.to("cpu", torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir, save_jinja_files=False)
    stats = {"train_seconds": round(secs, 1), "steps": cfg.steps, "batch_size": cfg.batch_size,
             "train_tokens": tokens, "final_loss": round(ema, 4), "parameters": n_params,
             "torch_threads": cfg.threads, "device": cfg.device, "config": asdict(cfg)}
    log(f"[train] done in {secs:.0f}s, saved to {out_dir}")
    return stats
