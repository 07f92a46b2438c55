"""Tiny random-weight models, one per family of the architecture table, built from configs."""

from __future__ import annotations

import torch
import transformers as tf

IDS = dict(vocab_size=320, bos_token_id=1, eos_token_id=2, pad_token_id=0)
COMMON = dict(**IDS, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
NEOX = dict(**IDS, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=128)
OPT = dict(**IDS, hidden_size=32, ffn_dim=48, num_hidden_layers=4, num_attention_heads=4,
           max_position_embeddings=128, word_embed_proj_dim=32)


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
        "gpt2": tf.GPT2Config(**{k: v for k, v in IDS.items() if k != "pad_token_id"},
                              n_embd=32, n_layer=4, n_head=4, n_positions=128),
        "gpt_neox": tf.GPTNeoXConfig(**NEOX),
        "gpt_neox_sequential": tf.GPTNeoXConfig(**NEOX, use_parallel_residual=False),
        "opt": tf.OPTConfig(**OPT),
        "opt_post_ln": tf.OPTConfig(**OPT, do_layer_norm_before=False),
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


_CORPUS = [
    "the film is good and the acting is great", "a bad and boring movie", "I loved it",
    "terrible plot, awful dialogue", "Classify the sentiment of each review as positive or negative.",
    "Review: Sentiment: positive negative", "Text: Label: ham spam", "wonderful, moving and funny",
]


def tiny_tokenizer():
    """A small byte-level BPE tokenizer trained in memory (no hub, no files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=310, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_loaded(family: str = "llama", seed: int = 0):
    """A tiny model of ``family`` wrapped as a `LoadedModel`, with the tiny tokenizer."""
    from core.model.loading import wrap_model

    tok = tiny_tokenizer()
    model = tiny_model(family, seed)
    assert len(tok) <= model.config.vocab_size, len(tok)
    return wrap_model(f"tiny-{family}", model, tok)


def tiny_bert(seed: int = 0) -> torch.nn.Module:
    """A tiny post-LN BERT encoder (no LM head), random weights with non-identity LayerNorms."""
    torch.manual_seed(seed)
    config = tf.BertConfig(vocab_size=320, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                           num_attention_heads=4, max_position_embeddings=128, pad_token_id=0)
    model = tf.AutoModel.from_config(config, add_pooling_layer=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def tiny_wordpiece_tokenizer():
    """A small uncased WordPiece tokenizer with [PAD] [UNK] [CLS] [SEP], trained in memory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator(_CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def tiny_bert_loaded(seed: int = 0):
    """A tiny BERT encoder wrapped as a `LoadedModel` (task 'classifier'), with a WordPiece tokenizer."""
    from core.model.loading import wrap_model

    tok = tiny_wordpiece_tokenizer()
    model = tiny_bert(seed)
    assert len(tok) <= model.config.vocab_size, len(tok)
    return wrap_model("tiny-bert", model, tok)
