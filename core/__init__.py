"""The evaluation core of the attention-pruning explorer: importable without Streamlit.

Typical use from a notebook::

    from core import load_model, load_dataset, evaluate, EvalConfig
    lm = load_model()                       # the embedded SmolLM2-135M-Instruct
    ds = load_dataset()                     # Rotten Tomatoes review sentences
    full = evaluate(lm, ds, EvalConfig(n=200))
    pruned = evaluate(lm, ds, EvalConfig(n=200, drop=(25, 26, 29)))
"""

from .cache import ResultCache
from .errors import UserError
from .model.loading import load_model
from .model.pruning import dropped_attention
from .study.importance import attention_scores, calibration_texts
from .task.data import load_dataset
from .task.evaluation import EvalConfig, EvalResult, evaluate
from .task.prompts import PromptConfig

__all__ = [
    "EvalConfig", "EvalResult", "PromptConfig", "ResultCache", "UserError", "attention_scores",
    "calibration_texts", "dropped_attention", "evaluate", "load_dataset", "load_model",
]
