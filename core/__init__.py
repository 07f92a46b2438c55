"""The evaluation core of the attention-pruning explorer: importable without Streamlit.

Four layers, each importing only the ones above it in this list (and the root modules):

* ``core.model``: the architecture table, dropping attention, loading, efficiency;
* ``core.task``: data, prompts, the encoder head, scoring, calibration, evaluation, `Setup`;
* ``core.explain``: features, targets, explainers, faithfulness, agreement, dataset explanations;
* ``core.study``: importance, strategies, sweeps, two-mask comparisons, figures, the report;

with the cache, settings, errors, progress types and the metrics table at the root.

Typical use from a notebook::

    from core import EvalConfig, ResultCache, Setup, evaluate, load_dataset, load_model
    setup = Setup(load_model(), load_dataset(), cache=ResultCache())   # SmolLM2-135M, Rotten Tomatoes
    full = evaluate(setup, EvalConfig(n=200))
    pruned = evaluate(setup, EvalConfig(n=200, drop=(25, 26, 29)))
"""

from .cache import ResultCache
from .errors import UserError
from .explain.dataset import DatasetExplainer, ExplainConfig, dataset_faithfulness
from .metrics import METRICS
from .model.loading import load_model
from .model.pruning import dropped_attention
from .study.compare import compare_explanations, compare_results, paired_stats
from .study.importance import attention_scores, calibration_texts
from .task.data import load_dataset
from .task.evaluation import EvalConfig, EvalResult, evaluate
from .task.prompts import PromptConfig
from .task.setup import Setup

__all__ = [
    "METRICS", "DatasetExplainer", "EvalConfig", "EvalResult", "ExplainConfig", "PromptConfig", "ResultCache", "Setup",
    "UserError", "attention_scores", "calibration_texts", "compare_explanations", "compare_results",
    "dataset_faithfulness", "dropped_attention", "evaluate", "load_dataset", "load_model", "paired_stats",
]
