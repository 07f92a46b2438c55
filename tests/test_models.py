"""Model resolution and the offline failure path (no hub is contacted in tests)."""

from __future__ import annotations

import pytest

from core.errors import OfflineError, UserError
from core.models import list_presets, load_model, resolve


def test_hub_preset_offline_fails_at_once_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="cannot be reached"):
        load_model("mistral-7b")


def test_bad_names_and_folders(tmp_path) -> None:
    with pytest.raises(UserError, match="unknown model 'nonsense'"):
        resolve("nonsense")
    with pytest.raises(UserError, match="does not exist"):
        resolve(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="without config.json"):
        resolve(str(tmp_path))
    with pytest.raises(UserError, match="unknown dtype"):
        load_model(dtype="int3")


def test_presets_list_the_study_models_and_the_offline_default() -> None:
    rows = {r["name"]: r for r in list_presets()}
    assert {"mistral-7b", "llama-2-7b", "llama-3-8b", "qwen3-4b", "qwen3-8b"} <= set(rows)
    assert rows["smollm2-135m-instruct"]["default"] and rows["smollm2-135m-instruct"]["offline"]
