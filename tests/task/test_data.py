"""Datasets: embedded files, the study's hub presets (on fixture files), a user's own CSV/JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import UserError
from core.task.data import HUB, load_dataset, load_hub_dataset, load_user_file

FIXTURES = Path(__file__).parent / "fixtures"


def test_default_dataset_is_rotten_tomatoes_sentences_with_fixed_splits() -> None:
    ds = load_dataset()
    assert ds.name == "movie-reviews" and ds.label_names == ("negative", "positive")
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sum(sizes.values()) > 9000 and sizes["test"] > 1500
    ids = [set(ex.id for ex in ds.splits[s]) for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    first = ds.splits["test"][0]
    assert "  " not in first.text and first.label in (0, 1)


def test_sms_spam_counts_match_the_uci_collection() -> None:
    ds = load_dataset("sms-spam")
    examples = [ex for s in ds.splits.values() for ex in s]
    assert len(examples) == 5574
    assert sum(ex.label for ex in examples) == 747


@pytest.mark.parametrize("name", ["tweets", "amazon", "nyt"])
def test_other_embedded_sentiment_sets_load(name: str) -> None:
    ds = load_dataset(name)
    labels = {ex.label for ex in ds.splits["test"]}
    assert labels == {0, 1} and len(ds.splits["train"]) > 1000


def test_sampling_is_seeded_balanced_and_warns_when_n_is_too_large() -> None:
    ds = load_dataset()
    a, _ = ds.sample("test", 50, seed=3)
    b, _ = ds.sample("test", 50, seed=3)
    assert [e.id for e in a] == [e.id for e in b]
    bal, _ = ds.sample("test", 40, seed=0, balanced=True)
    assert sum(e.label for e in bal) == 20
    every, warnings = ds.sample("validation", 10**6)
    assert len(every) == len(ds.splits["validation"]) and "larger than the validation split" in warnings[0]


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_presets_map_their_own_schema(name: str) -> None:
    files = {p.stem: str(p) for p in (FIXTURES / name).glob("*.jsonl")}
    ds = load_hub_dataset(name, data_files=files)
    assert ds.splits["test"], "the test split must have labelled rows"
    ex = ds.splits["test"][0]
    if name.startswith("arc") or name == "openbookqa":
        assert ds.task == "multiple-choice"
        assert "\nA. " in ex.text and ex.n_options >= 3
    else:
        assert ds.task == "classification" and ex.n_options == 0
    assert all(0 <= e.label < len(ds.label_names) for s in ds.splits.values() for e in s)


def test_arc_numeric_answer_keys_become_letters() -> None:
    ds = load_hub_dataset("arc-easy", data_files={p.stem: str(p) for p in (FIXTURES / "arc-easy").glob("*.jsonl")})
    q2 = next(e for e in ds.splits["test"] if e.id == "q2")
    assert q2.label == 1 and q2.n_options == 4 and "B. 100C" in q2.text


def test_unlabelled_glue_test_rows_are_dropped_and_boolq_maps_booleans() -> None:
    sst = load_hub_dataset("sst2", data_files={p.stem: str(p) for p in (FIXTURES / "sst2").glob("*.jsonl")})
    assert all(e.label >= 0 for e in sst.splits["test"]) and len(sst.splits["test"]) == 3
    bq = load_hub_dataset("boolq", data_files={p.stem: str(p) for p in (FIXTURES / "boolq").glob("*.jsonl")})
    assert {e.label for e in bq.splits["test"]} == {0, 1} and "Question: is the sky blue?" in bq.splits["test"][0].text


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_user_csv_with_names_and_non_ascii(tmp_path: Path) -> None:
    rows = "text,sentiment\n" + "\n".join(
        f'"{t}",{lab}' for t, lab in [("Ce film était génial 😀", "good"), ("Schrecklich, nie wieder", "bad")] * 5
    )
    ds = load_user_file(_write(tmp_path / "mine.csv", rows), label_column="sentiment")
    assert ds.label_names == ("bad", "good")
    texts = {e.text for s in ds.splits.values() for e in s}
    assert "Ce film était génial 😀" in texts


def test_user_jsonl_with_integer_labels_and_given_names(tmp_path: Path) -> None:
    lines = "\n".join(json.dumps({"body": f"text {i}", "y": i % 2}) for i in range(20))
    ds = load_user_file(_write(tmp_path / "d.jsonl", lines), text_column="body", label_column="y",
                        label_names=["no", "yes"])
    assert ds.label_names == ("no", "yes") and ds.template.label_words == ("no", "yes")


def test_user_file_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no column 'label'.*columns are: text, stars"):
        load_user_file(_write(tmp_path / "a.csv", "text,stars\nhello,5\n"))
    with pytest.raises(UserError, match="only one label"):
        load_user_file(_write(tmp_path / "b.csv", "text,label\nhi,pos\nho,pos\n"))
    with pytest.raises(UserError, match="empty"):
        load_user_file(_write(tmp_path / "c.csv", "text,label\n"))
    with pytest.raises(UserError, match="does not exist"):
        load_user_file(tmp_path / "missing.csv")
    with pytest.raises(UserError, match=r"\.csv or \.jsonl"):
        load_user_file(_write(tmp_path / "d.txt", "x"))
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_hub_dataset_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from core.errors import OfflineError

    with pytest.raises(OfflineError, match="cannot be reached"):
        load_hub_dataset("sst2")


def test_empty_and_repeated_texts_are_counted_and_said_on_every_evaluation(tmp_path: Path) -> None:
    from helpers.tiny_models import tiny_loaded

    from core.task.evaluation import EvalConfig, evaluate
    from core.task.prompts import PromptConfig
    from core.task.setup import Setup

    rows = "text,label\n" + "\n".join([f"review number {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
                                      + ['"   ",pos', ",neg", "review number 3,pos", "review number 4,neg"])
    ds = load_user_file(_write(tmp_path / "mixed.csv", rows))
    assert sum(len(s) for s in ds.splits.values()) == 42  # the two empty rows left out, the repeats kept
    assert any("2 of 44 rows" in w and "empty or whitespace" in w for w in ds.warnings)
    assert any("2 of 44 rows" in w and "repeat an earlier text" in w for w in ds.warnings)
    result = evaluate(Setup(tiny_loaded("llama"), ds, PromptConfig(style="zero-shot")), EvalConfig(n=50, val_n=0))
    assert set(ds.warnings) <= set(result.warnings)
    assert any(f"only {result.n} examples" in w and "95% interval" in w for w in result.warnings)
    with pytest.raises(UserError, match="every text of 'blank' is empty or whitespace"):
        load_user_file(_write(tmp_path / "blank.csv", 'text,label\n"  ",a\n,b\n'))
