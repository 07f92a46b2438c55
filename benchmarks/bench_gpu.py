"""GPU speed of the scoring and explaining paths on 7B shapes (prints figures; not a test).

Models are built from the configs of Mistral-7B and Llama-3-8B with random weights (speed does not
depend on the weights). On a GPU, in bf16:

1. examples/s of batched scoring (batch size chosen from free memory) at 64, 512 and 2,048 tokens,
   against a plain loop of one example per forward with full logits, in the same run;
2. the model FLOP rate reached, as a share of what a large bf16 matrix product reaches on this GPU in
   this run;
3. the wall-time ratio with 8 and 16 of 32 attention layers dropped, next to the FLOP-count bound;
4. seconds per Kernel SHAP explanation with 512 samples.

Without a GPU it runs the same measurements on a small shape on the CPU in fp32, and says so: those
figures show the code path works, not GPU speed.

    python benchmarks/bench_gpu.py [--models mistral-7b,llama-3-8b] [--tokens 64,512,2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from types import SimpleNamespace

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
import transformers as tf

from core.model.loading import LoadedModel
from core.model.pruning import dropped_attention, install
from core.task.scoring import candidate_logits

SHAPES = {
    "mistral-7b": dict(family="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=32768, rope_theta=1e6),
    "llama-3-8b": dict(family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=8192, rope_theta=5e5),
}
CPU_SHAPE = dict(family="llama", vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=32,
                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096)
"""A small 32-layer shape for machines without a GPU (layer count kept, so that 8 and 16 dropped compare)."""


def build(shape: dict, device: str, dtype: torch.dtype, tokenizer) -> LoadedModel:
    family = shape["family"]
    config = {"mistral": tf.MistralConfig, "llama": tf.LlamaConfig}[family](
        **{k: v for k, v in shape.items() if k != "family"}, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    spec = install(model)
    # built directly (no weights fingerprint: hashing 15 GB would time the CPU, not the GPU)
    return LoadedModel(name=f"random {family}", model=model, tokenizer=tokenizer, spec=spec,
                       fingerprint="random", dtype=str(dtype), device=device, source="config", num_layers=32,
                       has_chat_template=False, max_positions=config.max_position_embeddings)


def flops_per_example(lm: LoadedModel, tokens: int, dropped: int = 0) -> float:
    """Forward FLOPs: 2 per weight per token (embeddings and the unused LM head excluded) plus causal attention,
    less the attention projections and attention of the dropped layers."""
    c = lm.model.config
    head_dim = c.hidden_size // c.num_attention_heads
    attn_params = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp_params = 3 * c.hidden_size * c.intermediate_size
    layers = c.num_hidden_layers
    weights = 2 * tokens * ((layers - dropped) * attn_params + layers * mlp_params)
    attention = 2 * (layers - dropped) * tokens * tokens * c.hidden_size  # QK^T and AV, causal half
    return float(weights + attention)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matrix product (8192 on a GPU, 1024 on the CPU), best of 5."""
    n = 8192 if device.startswith("cuda") else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        for _ in range(10):
            torch.matmul(a, b)
        sync(device)
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * n**3 / best


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def inputs(lm: LoadedModel, n: int, tokens: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(3, lm.model.config.vocab_size, tokens - 1).tolist() for _ in range(n)]


def scoring(lm: LoadedModel, n: int, tokens: int, drop: tuple[int, ...], device: str, repeats: int) -> float:
    """Seconds to score ``n`` examples of ``tokens`` tokens (1 prefix token, reused) with batches chosen from memory."""
    builder = SimpleNamespace(prefix_ids=[1], candidate_ids=[5, 6])
    rows = inputs(lm, n, tokens)

    def run() -> None:
        with dropped_attention(lm.model, drop):
            candidate_logits(lm, builder, rows, batch_size=16)
    return timed(run, device, repeats)


def plain_loop(lm: LoadedModel, n: int, tokens: int, device: str, repeats: int) -> float:
    """Seconds for the plain baseline: one example per forward, whole input, full-vocabulary logits."""
    rows = inputs(lm, n, tokens)

    def run() -> None:
        with torch.inference_mode():
            for r in rows:
                lm.model(input_ids=torch.tensor([[1, *r]], device=device)).logits[0, -1].float().cpu()
    return timed(run, device, repeats)


def tokenizer_for(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained in memory on ``texts`` (random weights need no particular one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def kernel_shap_seconds(lm: LoadedModel, ds, samples: int) -> float:
    """Seconds per Kernel SHAP explanation of a default-data review, with ``samples`` perturbations."""
    from core.explain.dataset import DatasetExplainer, ExplainConfig
    from core.task.prompts import PromptConfig
    from core.task.setup import Setup

    explainer = DatasetExplainer(Setup(lm, ds, PromptConfig(style="zero-shot")), (),
                                 ExplainConfig.make("kernel-shap", {"n_samples": str(samples)}))
    examples, _ = ds.sample("test", 3, seed=0)
    explainer.explain(examples[0])  # warm-up
    times = []
    for ex in examples:
        t = time.perf_counter()
        explainer.explain(ex)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="mistral-7b,llama-3-8b")
    parser.add_argument("--tokens", default="64,512,2048")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512, help="Kernel SHAP samples per explanation")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name(0)}, bf16, torch {torch.__version__}")
    else:
        print(f"NO GPU HERE: a small 32-layer shape (hidden 256) on the CPU in fp32, {torch.get_num_threads()} "
              "threads. These figures check the code path; they are not GPU figures.")
    from core.task.data import load_dataset

    ds = load_dataset()
    tokenizer = tokenizer_for([ex.text for split in ds.splits.values() for ex in split], 8000)
    peak = matmul_rate(device, dtype)
    print(f"large matrix product: {peak / 1e12:.1f} TFLOP/s")
    shapes = {m: SHAPES[m] for m in args.models.split(",")} if gpu else {"small (CPU)": CPU_SHAPE}
    for name, shape in shapes.items():
        lm = build(shape, device, dtype, tokenizer)
        print(f"\n{name}: {sum(p.numel() for p in lm.model.parameters()) / 1e9:.2f} B parameters")
        print("tokens  examples/s  plain loop/s  speed-up  TFLOP/s  share of matmul")
        for tokens in map(int, args.tokens.split(",")):
            n = max(16, min(512, 32768 // tokens)) if gpu else max(8, min(64, 2048 // tokens))
            batched = scoring(lm, n, tokens, (), device, args.repeats)
            plain_n = max(4, n // 8)
            plain = plain_loop(lm, plain_n, tokens, device, args.repeats) / plain_n
            rate = n * flops_per_example(lm, tokens) / batched
            print(f"{tokens:6d}  {n / batched:10.1f}  {1 / plain:12.1f}  {plain * n / batched:7.1f}x  "
                  f"{rate / 1e12:7.1f}  {rate / peak:14.0%}")
            full_time = batched
            for dropped in (8, 16):
                drop = tuple(range(32 - dropped, 32))
                t = scoring(lm, n, tokens, drop, device, args.repeats)
                bound = flops_per_example(lm, tokens) / flops_per_example(lm, tokens, dropped)
                print(f"        {dropped} of 32 attention layers dropped: {full_time / t:.2f}x faster "
                      f"(FLOP-count bound {bound:.2f}x)")
        print(f"Kernel SHAP, {args.samples} samples: {kernel_shap_seconds(lm, ds, args.samples):.2f} s per explanation")
        del lm
        if gpu:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
