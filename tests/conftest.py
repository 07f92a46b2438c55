"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Under pytest-xdist (make test runs one worker per core) each worker computes on one thread: two workers with
# torch's default of one thread per core would each spin on both cores and slow the other.
if "PYTEST_XDIST_WORKER" in os.environ:
    for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_threads, "1")

from core.settings import LATENCY_ENV, PREFETCH_ENV, home  # noqa: E402 - after the thread settings

# The app's background prefetching would keep evaluating masks on the real model after a test ends and
# slow every later test on a 2-core machine; the tests of prefetching switch it on themselves. Likewise the
# latency readout times 20 forward passes after every page with a new mask (AppTest sessions and the browser's
# server alike) and only its own test reads it.
os.environ.setdefault(PREFETCH_ENV, "0")
os.environ.setdefault(LATENCY_ENV, "0")


def _private_home(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    models = home() / "models"
    models.mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(models, target_is_directory=True)
    monkeypatch.setenv("PRUNE_EXPLORER_HOME", str(root))
    return root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files that hold real-model (``slow``) tests first, each file's tests in their own order.

    `make test` hands whole files to two workers in collection order (``--dist loadfile
    --no-loadscope-reorder``). The real-model files take minutes each and the others seconds: started
    first, the long ones share out between the workers, and the short ones fill the end, so that neither
    worker sits idle while the other finishes a long file (xdist's own order, most tests first, put the
    app's files, with three or four tests each, last).
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: files and tests otherwise keep their order


@pytest.fixture(autouse=True)
def _restore_main_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put ``sys.modules["__main__"]`` back after every test.

    Streamlit's AppTest installs the script it ran as ``__main__`` and leaves it there. A process
    started with "spawn" afterwards re-imports ``__main__`` from its file, so it would run the app
    in bare mode (loading models, scoring) before doing its own work.
    """
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])


@pytest.fixture(autouse=True)
def _fresh_states() -> Iterator[None]:
    """Start every test with an empty hidden-state store (`core.model.states.STATES`).

    Tiny models built from the same config and seed have the same weights, so without this one test
    would resume from states another test recorded with other batches, and its numbers would depend
    on the order the tests ran in (by float rounding).
    """
    from core.model.states import STATES

    STATES.clear()
    yield
    STATES.clear()


@pytest.fixture()
def fresh_results(tmp_path, monkeypatch) -> Path:
    """A private result cache; the converted model folder is shared so it is not converted again."""
    return _private_home(tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def default_importance(tmp_path_factory) -> list[Path]:
    """The default model's attention-importance entries on the default data, measured once per session.

    Every app module (and the browser's server) needs them before its first page can suggest layers, and
    they do not depend on n, the mask or any other setting: measuring them in each module's own cache
    cost about 30 s a module. The measurement is deterministic, so a copy is what each would compute.
    """
    from core import ResultCache, load_dataset, load_model
    from core.study.importance import attention_scores, calibration_texts

    root = tmp_path_factory.mktemp("importance")
    with pytest.MonkeyPatch.context() as mp:
        _private_home(root, mp)
        attention_scores(load_model(), calibration_texts(load_dataset()), cache=ResultCache())
    return sorted((root / "results").glob("importance-*.json"))


@pytest.fixture(scope="session")
def minilm_head_entries(tmp_path_factory) -> list[Path]:
    """The cache entry of MiniLM's classifier head on the default data, fitted once per test session.

    Every test of the encoder in the app or the library starts by fitting it (about 26 s on one thread) and
    it depends on nothing a test varies. Under xdist the workers share it through their session's folder:
    the first to need it fits it while holding a lock, the others wait and copy it.
    """
    from filelock import FileLock

    from core import ResultCache, load_dataset, load_model
    from core.task.head import train_head

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base  # the session's own folder either way
    root = shared / "minilm-head"
    with FileLock(str(shared / "minilm-head.lock")):
        if not root.is_dir():
            work = Path(tempfile.mkdtemp(dir=shared, prefix="minilm-head-"))  # renamed once fitted: never half there
            with pytest.MonkeyPatch.context() as mp:
                _private_home(work, mp)
                train_head(load_model("all-minilm-l6-v2"), load_dataset(), cache=ResultCache())
            work.rename(root)
    return sorted((root / "results").glob("head-*.json"))


@pytest.fixture(scope="module")
def minilm_head(module_results, minilm_head_entries) -> Path:
    """`module_results` with MiniLM's head fitted on the full encoder already in it (`minilm_head_entries`); a head
    re-fitted on a pruned encoder is still fitted by the test that asks for it."""
    return _seed(module_results, minilm_head_entries)


def _seed(root: Path, entries: list[Path]) -> Path:
    """Copy cache ``entries`` into the result cache of the private home ``root``."""
    (root / "results").mkdir(exist_ok=True)
    for entry in entries:
        shutil.copy2(entry, root / "results" / entry.name)
    return root


@pytest.fixture()
def fresh_results_with_importance(fresh_results, default_importance) -> Path:
    """`fresh_results` holding the default model's importance entries (`default_importance`), for a test that
    drops the most redundant layers without testing how they are found."""
    return _seed(fresh_results, default_importance)


@pytest.fixture(scope="module")
def module_results(tmp_path_factory, default_importance) -> Iterator[Path]:
    """Like `fresh_results`, shared by the tests of one module (they then reuse each other's results); it
    starts with the default model's importance entries (`default_importance`) and nothing else."""
    with pytest.MonkeyPatch.context() as mp:
        yield _seed(_private_home(tmp_path_factory.mktemp("home"), mp), default_importance)
