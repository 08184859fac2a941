"""Tiny random-weight MoE causal LMs for tests (transformers 5.x, CPU, no downloads).

``tiny_model(family, seed)`` builds a ~tens-of-kB float32 model in eval mode from the family's
own config class, configured so that family-specific routing features are exercised:

* dense layers mixed with MoE layers (qwen2_moe/qwen3_moe via ``mlp_only_layers``/``decoder_sparse_step``,
  deepseek_v2/v3 and glm4_moe via ``first_k_dense_replace``, llama4 via ``interleave_moe_layer_step``,
  ernie4_5_moe via ``moe_layer_start_index``),
* shared experts (qwen2_moe, deepseek_v2/v3, glm4_moe, ernie4_5_moe, llama4),
* group-limited routing (deepseek_v2 ``group_limited_greedy``, deepseek_v3/glm4_moe ``noaux_tc``-style
  sigmoid + ``e_score_correction_bias`` with ``n_group > topk_group``),
* a router bias (gpt_oss) and a selection-only bias (deepseek_v3, glm4_moe, ernie4_5_moe).
"""

from __future__ import annotations

import torch
import transformers

FAMILIES = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v2",
    "deepseek_v3",
    "gpt_oss",
    "granitemoe",
    "phimoe",
    "llama4",
    "glm4_moe",
    "ernie4_5_moe",
    "dbrx",
    "jetmoe",
    "minimax",
]

VOCAB = 128
HIDDEN = 64
N_EXPERTS = 8
TOP_K = 2
ROUTER_STD = 0.5
_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _common(**overrides):
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        **_TOKENS,
    )
    kw.update(overrides)
    return kw


def _config(family: str):
    T = transformers
    if family == "mixtral":
        return T.MixtralConfig(**_common(num_local_experts=N_EXPERTS, num_experts_per_tok=TOP_K, head_dim=16))
    if family == "qwen2_moe":
        # layer 1 is dense (mlp_only_layers); every MoE layer has a gated shared expert.
        return T.Qwen2MoeConfig(
            **_common(
                num_experts=N_EXPERTS,
                num_experts_per_tok=TOP_K,
                moe_intermediate_size=32,
                shared_expert_intermediate_size=48,
                decoder_sparse_step=1,
                mlp_only_layers=[1],
                norm_topk_prob=False,
            )
        )
    if family == "qwen3_moe":
        return T.Qwen3MoeConfig(
            **_common(
                num_experts=N_EXPERTS,
                num_experts_per_tok=TOP_K,
                moe_intermediate_size=32,
                decoder_sparse_step=1,
                mlp_only_layers=[0],
                norm_topk_prob=True,
                head_dim=16,
            )
        )
    if family == "olmoe":
        return T.OlmoeConfig(
            **_common(num_experts=N_EXPERTS, num_experts_per_tok=TOP_K, intermediate_size=32, norm_topk_prob=False)
        )
    if family == "deepseek_v2":
        # layer 0 dense; 4 groups of 2 experts, top-2 groups (group_limited_greedy); 1 shared expert.
        return T.DeepseekV2Config(
            **_common(
                n_routed_experts=N_EXPERTS,
                num_experts_per_tok=TOP_K,
                moe_intermediate_size=32,
                n_shared_experts=1,
                first_k_dense_replace=1,
                n_group=4,
                topk_group=2,
                topk_method="group_limited_greedy",
                routed_scaling_factor=1.0,
                kv_lora_rank=16,
                q_lora_rank=None,
                qk_nope_head_dim=8,
                qk_rope_head_dim=8,
                v_head_dim=16,
                head_dim=8,
                num_key_value_heads=4,
            )
        )
    if family == "deepseek_v3":
        # layer 0 dense; sigmoid + e_score_correction_bias, 4 groups, top-2 groups (noaux_tc); 1 shared expert.
        return T.DeepseekV3Config(
            **_common(
                n_routed_experts=N_EXPERTS,
                num_experts_per_tok=TOP_K,
                moe_intermediate_size=32,
                n_shared_experts=1,
                first_k_dense_replace=1,
                n_group=4,
                topk_group=2,
                norm_topk_prob=True,
                routed_scaling_factor=2.5,
                kv_lora_rank=16,
                q_lora_rank=24,
                qk_nope_head_dim=8,
                qk_rope_head_dim=8,
                v_head_dim=16,
                num_key_value_heads=4,
                # default config uses YaRN tuned for 4k+ context; plain RoPE avoids a warning at max_pos=64.
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            )
        )
    if family == "gpt_oss":
        return T.GptOssConfig(
            **_common(
                num_local_experts=N_EXPERTS,
                num_experts_per_tok=TOP_K,
                intermediate_size=32,
                head_dim=16,
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                # default config uses YaRN (factor 32); plain RoPE avoids a warning at max_pos=64.
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            )
        )
    if family == "granitemoe":
        return T.GraniteMoeConfig(**_common(num_local_experts=N_EXPERTS, num_experts_per_tok=TOP_K, intermediate_size=32))
    if family == "phimoe":
        # sparsemixer hard-codes top-2.
        return T.PhimoeConfig(
            **_common(num_local_experts=N_EXPERTS, num_experts_per_tok=2, intermediate_size=32, router_jitter_noise=0.01)
        )
    if family == "llama4":
        # interleave_moe_layer_step=2 -> moe_layers=[1, 3]; layers 0, 2 are dense Llama4TextMLP.
        return T.Llama4TextConfig(
            **_common(
                num_hidden_layers=4,
                num_local_experts=N_EXPERTS,
                num_experts_per_tok=TOP_K,
                intermediate_size=32,
                intermediate_size_mlp=64,
                interleave_moe_layer_step=2,
                head_dim=16,
                attention_chunk_size=16,
            )
        )
    if family == "glm4_moe":
        return T.Glm4MoeConfig(
            **_common(
                n_routed_experts=N_EXPERTS,
                num_experts_per_tok=TOP_K,
                moe_intermediate_size=32,
                n_shared_experts=1,
                first_k_dense_replace=1,
                n_group=4,
                topk_group=2,
                norm_topk_prob=True,
                routed_scaling_factor=1.0,
            )
        )
    if family == "ernie4_5_moe":
        # layers 1, 2 are MoE (moe_layer_start_index=1); layer 0 dense; 1 shared expert.
        return T.Ernie4_5_MoeConfig(
            **_common(
                moe_num_experts=N_EXPERTS,
                moe_k=TOP_K,
                moe_intermediate_size=32,
                moe_num_shared_experts=1,
                moe_layer_start_index=1,
                moe_layer_end_index=2,
                moe_layer_interval=1,
            )
        )
    if family == "dbrx":
        return T.DbrxConfig(
            d_model=HIDDEN,
            n_heads=4,
            n_layers=2,
            max_seq_len=64,
            vocab_size=VOCAB,
            attn_config={"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0},
            ffn_config={
                "ffn_hidden_size": 32,
                "moe_num_experts": N_EXPERTS,
                "moe_top_k": TOP_K,
                "moe_jitter_eps": None,
                "moe_normalize_expert_weights": 1.0,
            },
            tie_word_embeddings=False,
            **_TOKENS,
        )
    if family == "jetmoe":
        # JetMoe also routes attention (MoA): self_attention.experts.router is a second router per layer.
        return T.JetMoeConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_key_value_heads=2,
            kv_channels=16,
            intermediate_size=32,
            max_position_embeddings=64,
            num_local_experts=N_EXPERTS,
            num_experts_per_tok=TOP_K,
            tie_word_embeddings=False,
            **_TOKENS,
        )
    if family == "minimax":
        return T.MiniMaxConfig(
            **_common(
                num_local_experts=N_EXPERTS,
                num_experts_per_tok=TOP_K,
                intermediate_size=32,
                head_dim=16,
                layer_types=["linear_attention", "full_attention", "linear_attention"],
                block_size=4,
            )
        )
    raise KeyError(f"unknown family {family!r}; known: {FAMILIES}")


_CAUSAL_LM = {
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "granitemoe": "GraniteMoeForCausalLM",
    "phimoe": "PhimoeForCausalLM",
    "llama4": "Llama4ForCausalLM",
    "glm4_moe": "Glm4MoeForCausalLM",
    "ernie4_5_moe": "Ernie4_5_MoeForCausalLM",
    "dbrx": "DbrxForCausalLM",
    "jetmoe": "JetMoeForCausalLM",
    "minimax": "MiniMaxForCausalLM",
}


def _is_router(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return name.endswith(("Router", "TopKGating")) or name in ("DeepseekV2TopkRouter",)


@torch.no_grad()
def _reinit_routers(model: torch.nn.Module) -> None:
    # Several routers are created with torch.zeros (e.g. Qwen2MoeTopKRouter, OlmoeTopKRouter,
    # DeepseekV3TopkRouter, GptOssTopKRouter) and the others get std=initializer_range (0.02), which gives
    # near-uniform logits: ties / identical expert choices for every token and a meaningless routing test.
    # Re-draw every router weight with a large std so routing differs per token, and give the router bias
    # (gpt_oss) and the selection-only e_score_correction_bias (deepseek_v3 / glm4_moe / ernie4_5_moe)
    # small non-zero values so those code paths actually change the choice.
    for module in model.modules():
        if not _is_router(module):
            continue
        for pname, p in module.named_parameters():
            if p.dim() == 2:  # (num_experts, hidden): weight or layer.weight
                p.normal_(0.0, ROUTER_STD)
            elif pname.endswith("bias"):
                p.normal_(0.0, 0.1)
        for bname, b in module.named_buffers():
            if bname.endswith("e_score_correction_bias"):
                b.normal_(0.0, 0.05)
        # ernie4_5_moe keeps e_score_correction_bias as a (1, E) Parameter inside moe_statics.
        for pname, p in module.named_parameters():
            if pname.endswith("e_score_correction_bias"):
                p.normal_(0.0, 0.05)


def tiny_model(family: str, seed: int = 0, *, experts_implementation: str | None = None,
               **overrides):
    """Return ``(model, config)``: a tiny random-weight float32 causal LM in eval mode.

    ``experts_implementation``: None keeps the transformers default (``grouped_mm``, CPU fallback, for the
    families whose Experts class uses ``@use_experts_implementation``); pass ``"eager"`` for the per-expert loop.
    ``overrides``: config attributes set before the model is built, e.g. a real tokenizer's
    ``vocab_size`` and special-token ids (``bos_token_id``, ``eos_token_id``, ``pad_token_id``).
    """
    config = _config(family)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise KeyError(f"{family} config has no attribute {key!r}")
        setattr(config, key, value)
    # eager attention: sdpa/flex are fine too on CPU, but eager is supported by every family here.
    config._attn_implementation = "eager"
    if experts_implementation is not None:
        config._experts_implementation = experts_implementation
    torch.manual_seed(seed)
    cls = getattr(transformers, _CAUSAL_LM[family])
    model = cls(config)
    _reinit_routers(model)
    model = model.to(torch.float32).eval()
    return model, model.config


if __name__ == "__main__":  # quick smoke test: python tests/tiny_models.py
    for fam in FAMILIES:
        m, c = tiny_model(fam)
        ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = m(input_ids=ids)
        gen = m.generate(ids, max_new_tokens=3, do_sample=False)
        n = sum(p.numel() for p in m.parameters())
        print(f"{fam:14s} params={n:7d} logits={tuple(out.logits.shape)} gen={tuple(gen.shape)} "
              f"finite={bool(torch.isfinite(out.logits).all())}")


def other_experts(h, natural) -> list[int]:
    """A top-k set of layer handle ``h``'s experts outside ``natural`` (the ones it chose),
    within one expert group where the router limits groups: a route that forces it changes
    the routing and stays valid."""
    info = h.info
    pool = [e for e in range(info.num_experts) if e not in natural]
    if info.n_group:
        g = info.group_of(pool[0])
        pool = [e for e in pool if info.group_of(e) == g]
    return sorted(pool[: info.top_k])
