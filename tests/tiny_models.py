"""Tiny random-weight models, one per family of the architecture table, built from configs."""

from __future__ import annotations

import torch
import transformers as tf

COMMON = dict(vocab_size=97, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def _configs() -> dict[str, tf.PretrainedConfig]:
    return {
        "llama": tf.LlamaConfig(**COMMON),
        "mistral": tf.MistralConfig(**COMMON),
        "qwen2": tf.Qwen2Config(**COMMON),
        "qwen3": tf.Qwen3Config(**COMMON, head_dim=8),
        "gemma": tf.GemmaConfig(**COMMON, head_dim=8),
        "gemma2": tf.Gemma2Config(**COMMON, head_dim=8, sliding_window=4),
        # alternate sliding and full layers so that both kinds are exercised
        "gemma3": tf.Gemma3TextConfig(**COMMON, head_dim=8, sliding_window=4,
                                      layer_types=["sliding_attention", "full_attention"] * 2),
        "phi3": tf.Phi3Config(**COMMON),
        "gpt2": tf.GPT2Config(vocab_size=97, bos_token_id=1, eos_token_id=2, n_embd=32, n_layer=4, n_head=4, n_positions=128),
        "gpt_neox": tf.GPTNeoXConfig(vocab_size=97, bos_token_id=1, eos_token_id=2, hidden_size=32, intermediate_size=48,
                                     num_hidden_layers=4, num_attention_heads=4,
                                     max_position_embeddings=128),
        "gpt_neox_sequential": tf.GPTNeoXConfig(vocab_size=97, bos_token_id=1, eos_token_id=2, hidden_size=32, intermediate_size=48,
                                                num_hidden_layers=4, num_attention_heads=4,
                                                max_position_embeddings=128,
                                                use_parallel_residual=False),
        "opt": tf.OPTConfig(vocab_size=97, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=32, ffn_dim=48, num_hidden_layers=4,
                            num_attention_heads=4, max_position_embeddings=128,
                            word_embed_proj_dim=32),
        "opt_post_ln": tf.OPTConfig(vocab_size=97, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=32, ffn_dim=48, num_hidden_layers=4,
                                    num_attention_heads=4, max_position_embeddings=128,
                                    word_embed_proj_dim=32, do_layer_norm_before=False),
    }


FAMILIES = sorted(_configs())


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = _configs()[family]
    model = tf.AutoModelForCausalLM.from_config(config)
    # random weights with norms that are not the identity, so that a skipped norm shows
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()
