"""Token-attribution explainers, built on Captum, over the words (or tokens) of an input.

Every explainer scores how much each feature supports the target's predicted answer (its
probability renormalised over the candidate answers). Higher means more support.

* ``lime`` (Ribeiro et al. 2016): a weighted ridge regression on random word subsets. As in the
  LIME package for text, the distance is cosine and the kernel width 0.25, and ridge alpha is 1.
* ``kernel-shap`` (Lundberg & Lee 2017): Captum's Shapley-kernel sampling, least squares.
* ``integrated-gradients``: on the input embeddings, from a baseline embedding (zero by default).
* ``gradient-x-input``: the gradient times the input embedding.
* ``occlusion``: Captum's feature ablation, p(x) - p(x without the word), one word at a time.
* ``random``: seeded uniform scores, the baseline that faithfulness is compared against.

Perturbation explainers remove a feature by deleting its tokens, or, on request, by replacing them
with the pad or unknown token (see `core.features`). All of a sample's perturbations go to the
target in one call, which scores them in batches behind the shared prompt prefix. Gradient
explainers sum the attribution over the embedding dimension and over a word's tokens.

Sampling uses its own seeded generator, never torch's global one, so an explanation is the same
whichever thread computes it.

Each explainer is one function, registered with its metadata by `_register` in `EXPLAINERS` (in
menu order); `explain` computes the unperturbed prediction and hands it to that function as a
`Call`.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from captum._utils.models.model import Model
from captum.attr import FeatureAblation, InputXGradient, IntegratedGradients, KernelShap, Lime, LimeBase
from captum.attr._core.lime import get_exp_kernel_similarity_function
from torch.utils.data import DataLoader

from ..errors import UserError
from .features import Features
from .targets import Target

EXPLAINER_VERSION = 1
"""Bump when an explainer's algorithm changes, so cached explanations are recomputed."""


@dataclass(frozen=True)
class Call:
    """One explanation request, as an explainer's function gets it: the input, the explainer's
    resolved parameters and the target's prediction on the unperturbed input."""

    target: Target
    features: Features
    params: Mapping[str, object]
    probs: np.ndarray
    predicted: int
    replacement: int | None
    """The token that replaces removed tokens (None deletes them)."""
    n_options: int

    @property
    def seed(self) -> int:
        """The per-input seed of an explainer with a ``seed`` parameter."""
        return _seed_for(int(self.params["seed"]), self.features)  # type: ignore[call-overload]

    @property
    def feature_mask(self) -> torch.Tensor:
        """[1, n_tokens] the feature of each token: Captum's ``feature_mask`` over token presence."""
        return torch.tensor([self.features.groups])

    def forward(self, presence: torch.Tensor) -> torch.Tensor:
        """[n_rows, n_answers] answer probabilities for rows of token presence (1 keeps a token)."""
        rows = [_ids_from_presence(self.features, p, self.replacement) for p in presence]
        return torch.from_numpy(self.target.probs(rows, self.n_options)).float()


_Run = Callable[[Call], np.ndarray]
"""An explainer's function: one score per feature for the call's predicted answer."""


@dataclass(frozen=True)
class ExplainerInfo:
    """An explainer: what the UI and the command line show of it, and the function that scores."""

    name: str
    title: str
    kind: str
    """'perturbation', 'gradient' or 'baseline'."""
    defaults: Mapping[str, object]
    description: str
    run: _Run = field(repr=False)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


EXPLAINERS: dict[str, ExplainerInfo] = {}
"""Every explainer by name, in menu order; filled by `_register` below."""


def _register(name: str, title: str, kind: str, defaults: Mapping[str, object], description: str,
              choices: Mapping[str, tuple[str, ...]] | None = None) -> Callable[[_Run], _Run]:
    """Decorator: add the function to `EXPLAINERS` as the explainer ``name``."""

    def add(run: _Run) -> _Run:
        EXPLAINERS[name] = ExplainerInfo(name, title, kind, defaults, description, run, choices or {})
        return run

    return add


DEFAULT_EXPLAINER = "lime"


@dataclass
class Attribution:
    explainer: str
    params: dict[str, object]
    names: list[str]
    """The features: words or tokens of the input."""
    scores: np.ndarray
    """One score per feature: support for the predicted answer."""
    predicted: int
    probs: np.ndarray
    """The target's answer probabilities on the unperturbed input."""
    seconds: float
    granularity: str = "word"

    @property
    def order(self) -> list[int]:
        """Features from the most to the least supporting (ties: earlier first)."""
        return sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))

    def as_dict(self) -> dict:
        return {"explainer": self.explainer, "params": self.params, "granularity": self.granularity,
                "features": self.names, "scores": [float(s) for s in self.scores],
                "predicted": self.predicted, "probs": [float(p) for p in self.probs], "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> Attribution:
        if len(d["features"]) != len(d["scores"]):
            raise ValueError(f"{len(d['features'])} features but {len(d['scores'])} scores")
        return cls(explainer=d["explainer"], params=d["params"], names=list(d["features"]),
                   scores=np.array(d["scores"], dtype=np.float64), predicted=int(d["predicted"]),
                   probs=np.array(d["probs"], dtype=np.float64), seconds=float(d["seconds"]),
                   granularity=d["granularity"])


def check_explainer(name: str) -> ExplainerInfo:
    if name not in EXPLAINERS:
        raise UserError(f"unknown explainer '{name}'; use one of {', '.join(EXPLAINERS)}")
    return EXPLAINERS[name]


def resolve_params(name: str, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """The explainer's defaults updated with ``overrides`` (strings are converted), checked."""
    info = check_explainer(name)
    params = dict(info.defaults)
    for key, value in (overrides or {}).items():
        if key not in info.defaults:
            allowed = ", ".join(info.defaults) or "none"
            raise UserError(f"explainer '{name}' has no parameter '{key}'; its parameters: {allowed}")
        kind = type(info.defaults[key])
        try:
            params[key] = kind(value)
        except (TypeError, ValueError):
            raise UserError(f"parameter '{key}' of '{name}' must be a {kind.__name__} (got {value!r})") from None
    for key, allowed in info.choices.items():
        if params[key] not in allowed:
            raise UserError(f"parameter '{key}' of '{name}' must be one of {', '.join(allowed)} (got {params[key]!r})")
    minimum = {"n_samples": 10, "n_steps": 2}
    for key, low in minimum.items():
        if key in params and int(params[key]) < low:  # type: ignore[call-overload]
            raise UserError(f"parameter '{key}' of '{name}' must be at least {low} (got {params[key]})")
    for key in ("kernel_width",):
        if key in params and float(params[key]) <= 0:  # type: ignore[arg-type]
            raise UserError(f"parameter '{key}' of '{name}' must be positive (got {params[key]})")
    if "alpha" in params and float(params["alpha"]) < 0:  # type: ignore[arg-type]
        raise UserError(f"parameter 'alpha' of '{name}' must be 0 or more (got {params['alpha']})")
    return params


class _WeightedRidge(Model):
    """Closed-form weighted ridge regression with an unpenalised intercept (float64).

    Used as Captum's interpretable model instead of its scikit-learn wrappers: exact, fast for a few
    hundred samples, and one dependency fewer. alpha=0 is weighted least squares (Kernel SHAP).
    """

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.coef = torch.zeros(0)

    def fit(self, train_data: DataLoader, **kwargs: object) -> None:
        xs, ys, ws = zip(*train_data, strict=True)
        x = torch.cat(xs).double().numpy()
        y = torch.cat(ys).double().numpy().reshape(len(x))
        w = torch.cat(ws).double().numpy().reshape(len(x))
        w = w / w.sum()
        xc = x - w @ x
        yc = y - w @ y
        a = xc.T @ (w[:, None] * xc) + self.alpha * np.eye(x.shape[1]) / len(x)
        b = xc.T @ (w * yc)
        self.coef = torch.from_numpy(np.linalg.lstsq(a, b, rcond=None)[0]).float()[None]

    def representation(self) -> torch.Tensor:
        return self.coef

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.coef.T


class _SeededKernelShap(KernelShap):
    """Captum's Kernel SHAP with its coalition sampling drawn from a private generator."""

    def __init__(self, forward_func, generator: torch.Generator) -> None:
        super().__init__(forward_func)
        self.generator = generator

    def kernel_shap_perturb_generator(self, original_inp, **kwargs):
        num_features = int(kwargs["num_interp_features"])
        probs = kwargs["num_select_distribution"].probs
        yield torch.ones(1, num_features, dtype=torch.long)
        yield torch.zeros(1, num_features, dtype=torch.long)
        while True:
            k = int(torch.multinomial(probs, 1, generator=self.generator)) + 1
            chosen = torch.randperm(num_features, generator=self.generator)[:k]
            sample = torch.zeros(1, num_features, dtype=torch.long)
            sample[0, chosen] = 1
            yield sample


def _seed_for(seed: int, features: Features) -> int:
    """A per-input seed: the same input and seed give the same samples, different inputs differ."""
    return zlib.crc32(np.asarray(features.ids, dtype=np.int64).tobytes(), seed & 0xFFFFFFFF)


def explain(target: Target, features: Features, explainer: str = DEFAULT_EXPLAINER,
            params: Mapping[str, object] | None = None, replacement: int | None = None,
            n_options: int = 0) -> Attribution:
    """Attribute the target's predicted answer on ``features`` to each feature.

    ``replacement`` is the token that replaces removed tokens (None deletes them); it applies to
    the perturbation explainers. ``n_options`` limits the answers to the first n (multiple choice).
    """
    params = resolve_params(explainer, params)
    start = time.perf_counter()
    probs = target.probs([list(features.ids)], n_options)[0]
    predicted = int(np.argmax(probs))
    scores = EXPLAINERS[explainer].run(Call(target, features, params, probs, predicted, replacement, n_options))
    return Attribution(explainer=explainer, params=params, names=list(features.names),
                       scores=np.asarray(scores, dtype=np.float64), predicted=predicted, probs=probs,
                       seconds=time.perf_counter() - start, granularity=features.granularity)


def _ids_from_presence(features: Features, presence: torch.Tensor, replacement: int | None) -> list[int]:
    kept = (presence > 0.5).tolist()
    if replacement is None:
        return [t for t, k in zip(features.ids, kept, strict=True) if k]
    return [t if k else replacement for t, k in zip(features.ids, kept, strict=True)]


def _per_feature(token_values: np.ndarray, features: Features, reduce: str) -> np.ndarray:
    """Token values to feature values: the sum over a feature's tokens, or its first token's value."""
    out = np.zeros(features.n)
    seen = np.zeros(features.n, dtype=bool)
    for value, g in zip(token_values, features.groups, strict=True):
        if reduce == "sum":
            out[g] += value
        elif not seen[g]:
            out[g], seen[g] = value, True
    return out


_Forward = Callable[[torch.Tensor], torch.Tensor]


def _sampled_scores(call: Call, method: Callable[[torch.Generator], LimeBase]) -> np.ndarray:
    """The surrogate model's coefficients of a sampling explainer (LIME or Kernel SHAP).

    ``method`` builds the Captum explainer around the call's seeded generator.
    """
    features, predicted = call.features, call.predicted
    if features.n == 1:
        # one feature: its Shapley value (and LIME's only sensible answer) is p(x) - p(nothing)
        empty = features.ids_keeping([False], call.replacement)
        return np.array([call.probs[predicted] - call.target.probs([empty], call.n_options)[0, predicted]])
    n_samples = int(call.params["n_samples"])  # type: ignore[call-overload]
    coefs = method(torch.Generator().manual_seed(call.seed)).attribute(
        torch.ones(1, len(features.ids)), baselines=0.0, target=predicted, feature_mask=call.feature_mask,
        n_samples=n_samples, perturbations_per_eval=n_samples, return_input_shape=False)
    return coefs.reshape(-1).double().numpy()


def _gradient_scores(call: Call, attribute: Callable[[_Forward, torch.Tensor], torch.Tensor]) -> np.ndarray:
    """A gradient attribution over the input embeddings, summed over dimensions and a feature's tokens.

    ``attribute(forward, embeds)`` runs the Captum method (with gradients enabled) on the function
    from embeddings to answer probabilities.
    """
    embeds = call.target.embed(call.features.ids)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return call.target.probs_from_embeddings(x, call.n_options)

    with torch.enable_grad():
        attr = attribute(forward, embeds)
    token_values = attr[0].sum(dim=-1).detach().double().numpy()
    return _per_feature(token_values, call.features, reduce="sum")


@_register("lime", "LIME", "perturbation", {"n_samples": 200, "kernel_width": 0.25, "alpha": 1.0, "seed": 0},
           "weighted ridge regression on random word subsets (cosine kernel)")
def _lime(call: Call) -> np.ndarray:
    def method(generator: torch.Generator) -> LimeBase:
        return Lime(call.forward, interpretable_model=_WeightedRidge(float(call.params["alpha"])),  # type: ignore[arg-type]
                    similarity_func=get_exp_kernel_similarity_function("cosine", float(call.params["kernel_width"])),  # type: ignore[arg-type]
                    perturb_func=lambda _inp, **kw: torch.bernoulli(
                        torch.full((1, int(kw["num_interp_features"])), 0.5), generator=generator).long())

    return _sampled_scores(call, method)


@_register("kernel-shap", "Kernel SHAP", "perturbation", {"n_samples": 200, "seed": 0},
           "Shapley values estimated from word coalitions sampled by the Shapley kernel")
def _kernel_shap(call: Call) -> np.ndarray:
    def method(generator: torch.Generator) -> LimeBase:
        shap = _SeededKernelShap(call.forward, generator)
        shap.interpretable_model = _WeightedRidge(0.0)
        return shap

    return _sampled_scores(call, method)


@_register("integrated-gradients", "Integrated Gradients", "gradient", {"n_steps": 32, "baseline": "zero"},
           "path integral of gradients from a baseline embedding to the input embeddings",
           choices={"baseline": ("zero", "pad", "unk")})
def _integrated_gradients(call: Call) -> np.ndarray:
    def attribute(forward: _Forward, embeds: torch.Tensor) -> torch.Tensor:
        kind = str(call.params["baseline"])
        if kind == "zero":
            baseline = torch.zeros_like(embeds)
        else:
            token = call.target.special_ids.get(kind)
            if token is None:
                raise UserError(f"this model's tokenizer has no {kind} token; use the zero baseline")
            baseline = call.target.embed([token] * len(call.features.ids))
        steps = int(call.params["n_steps"])  # type: ignore[call-overload]
        return IntegratedGradients(forward).attribute(
            embeds, baselines=baseline, target=call.predicted, n_steps=steps, internal_batch_size=steps)

    return _gradient_scores(call, attribute)


@_register("gradient-x-input", "Gradient x Input", "gradient", {},
           "gradient of the answer probability times the input embedding")
def _gradient_x_input(call: Call) -> np.ndarray:
    return _gradient_scores(call, lambda forward, embeds: InputXGradient(forward).attribute(
        embeds.clone().requires_grad_(), target=call.predicted))


@_register("occlusion", "Occlusion", "perturbation", {},
           "drop in the answer probability when one word is removed")
def _occlusion(call: Call) -> np.ndarray:
    attr = FeatureAblation(call.forward).attribute(
        torch.ones(1, len(call.features.ids)), baselines=0.0, target=call.predicted,
        feature_mask=call.feature_mask, perturbations_per_eval=call.features.n)
    return _per_feature(attr[0].double().numpy(), call.features, reduce="first")


@_register("random", "Random", "baseline", {"seed": 0},
           "seeded uniform random scores: the baseline for faithfulness")
def _random(call: Call) -> np.ndarray:
    return np.random.default_rng(call.seed).random(call.features.n)
