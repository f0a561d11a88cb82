"""Finding models: bundled, user-registered, directories, archives and published
checkpoints; listing them; loading them once per process (a cache napari keeps between runs).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EMDiffuseError, ModelFileError
from ..io.atomic import atomic_file
from ..io.resources import resources_dir
from .cards import ARCHITECTURES
from .device import resolve_device
from .factory import build_module, create_model, expected_shapes, published_card_for
from .files import (
    CARD_NAME,
    clean_published_state_dict,
    extract_archive,
    load_model_dir,
    load_state_dict_file,
    read_card,
    safetensors_header,
)
from .model import EMDiffuseModel

__all__ = [
    "ModelInfo",
    "DEFAULT_MODELS",
    "ANY_FACTOR_MODEL",
    "default_model",
    "CHECKPOINT_SUFFIXES",
    "load_model",
    "list_models",
    "register_model",
    "user_dir",
    "bundled_models_dir",
]

DEFAULT_MODELS = {
    "denoise": "demo-denoise",
    "super-resolve": "demo-sr2",
    "isotropic-i": "demo-isotropic",
    "isotropic-a": "demo-isotropic",
}
#: The bundled isotropic model for factors other than the default model's own: it is told how
#: far into the gap each slice lies (network.gap_depth), so it serves every factor. The
#: factor-3 specialist stays the default where it applies: 0.23 dB better at factor 3 on the
#: held-out C. elegans rows (benchmarks/quality.py --tasks iso).
ANY_FACTOR_MODEL = "demo-isotropic-any"


def default_model(task: str, factor: int | None = None) -> str:
    """The bundled model a task uses when none is named; for the isotropic tasks, the one for ``factor``.

    Examples
    --------
    >>> default_model("isotropic-i", 3), default_model("isotropic-i", 10)
    ('demo-isotropic', 'demo-isotropic-any')
    """
    name = DEFAULT_MODELS[task]
    if task.startswith("isotropic") and factor is not None:
        here = bundled_models_dir()
        z = read_card(here / name).z_factor if (here / name / CARD_NAME).is_file() else None
        if z is not None and z != factor and (here / ANY_FACTOR_MODEL / CARD_NAME).is_file():
            return ANY_FACTOR_MODEL
    return name
#: Bare weight files that :func:`load_model` accepts with an architecture (``arch=``).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


@dataclass(frozen=True)
class ModelInfo:
    """One entry of :func:`list_models`: a model directory and what its card says."""

    name: str
    task: str
    kind: str
    path: Path
    source: str  # "bundled" or "user"
    description: str = ""


def user_dir() -> Path:
    """Where imported and fine-tuned models are registered (``EMDIFFUSE_HOME`` overrides)."""
    env = os.environ.get("EMDIFFUSE_HOME")
    if env:
        return Path(env)
    from platformdirs import user_data_dir  # lazy: only needed without EMDIFFUSE_HOME

    return Path(user_data_dir("napari-emdiffuse", appauthor=False))


def bundled_models_dir() -> Path:
    """Where the bundled models are: ``resources/models``."""
    return resources_dir() / "models"


def _registry_file() -> Path:
    return user_dir() / "models.json"


def _read_registry() -> list[str]:
    try:
        data = json.loads(_registry_file().read_text())
        return [str(p) for p in data.get("models", [])]
    except (OSError, ValueError, AttributeError):
        return []


def register_model(path: str | Path) -> None:
    """Remember a user model directory so that it shows up in every model list."""
    path = Path(path).resolve()
    if not (path / CARD_NAME).is_file():
        raise ModelFileError(f"'{path}' is not a model directory (no {CARD_NAME})")
    entries = [p for p in _read_registry() if Path(p) != path] + [str(path)]
    with atomic_file(_registry_file()) as tmp:
        tmp.write_text(json.dumps({"models": entries}, indent=1))


def list_models(task: str | None = None) -> list[ModelInfo]:
    """Bundled models, then user models (registered or under ``user_dir()/models``)."""
    found: list[ModelInfo] = []
    seen: set[Path] = set()

    def add(path: Path, source: str) -> None:
        path = path.resolve()
        if path in seen or not (path / CARD_NAME).is_file():
            return
        try:
            card = read_card(path)
        except ModelFileError:
            return
        seen.add(path)
        if task is None or card.task == task or (task.startswith("isotropic") and card.task.startswith("isotropic")):
            found.append(ModelInfo(card.name, card.task, card.kind, path, source, card.description))

    bundled = bundled_models_dir()
    if bundled.is_dir():
        for d in sorted(bundled.iterdir()):
            add(d, "bundled")
    user_models = user_dir() / "models"
    if user_models.is_dir():
        for d in sorted(user_models.iterdir()):
            add(d, "user")
    for p in _read_registry():
        add(Path(p), "user")
    return found


_CACHE: dict[tuple, EMDiffuseModel] = {}
_CACHE_LOCK = threading.Lock()


def _cache_key(path: Path, arch: str | None, device: torch.device) -> tuple:
    weights_mtime = max((p.stat().st_mtime_ns for p in path.iterdir()), default=0) if path.is_dir() else path.stat().st_mtime_ns
    return (str(path.resolve()), weights_mtime, arch, str(device))


def _load_dir(path: Path) -> EMDiffuseModel:
    card, sd = load_model_dir(path, expected_shapes)
    loaded = create_model(card, sd)
    loaded.path = path
    return loaded


def _load_checkpoint(path: Path, arch: str) -> EMDiffuseModel:
    source = f"'{path}' as {arch}"
    if path.suffix.lower() == ".safetensors":
        # Shapes from the header, checked before any tensor is read (the file may be huge).
        header = safetensors_header(path)
        published_card_for(clean_published_state_dict({k: tuple(v["shape"]) for k, v in header.items()}), arch,
                           name=path.stem, source=source)
    sd = clean_published_state_dict(load_state_dict_file(path))
    card = published_card_for({k: tuple(v.shape) for k, v in sd.items()}, arch, name=path.stem, source=source)
    module = build_module(card)
    module.load_state_dict(sd)
    return EMDiffuseModel(card, module, path=path)


def _find_named(name: str) -> Path | None:
    for info in list_models():
        if info.name == name or info.path.name == name:
            return info.path
    return None


def load_model(
    model: "str | Path | EMDiffuseModel | None" = None,
    *,
    task: str | None = None,
    arch: str | None = None,
    device: str | torch.device = "cpu",
    cache: bool = True,
) -> EMDiffuseModel:
    """Load a model by bundled/user name, directory, zip archive or published checkpoint.

    Parameters
    ----------
    model : str, Path, EMDiffuseModel or None
        None picks the bundled default for ``task``.
    task : str, optional
        The task the caller will run; a model made for another task is refused.
    arch : str, optional
        Needed for published ``.pth`` checkpoints: EMDiffuse-n, EMDiffuse-r, vEMDiffuse-i
        or vEMDiffuse-a.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    cache : bool
        Reuse a model already loaded in this process (napari keeps it between runs).

    Examples
    --------
    >>> m = load_model(task="denoise")  # doctest: +SKIP
    >>> m.card.name  # doctest: +SKIP
    'demo-denoise'
    """
    dev = resolve_device(device)
    if isinstance(model, EMDiffuseModel):
        loaded = model
        if loaded.device != dev:
            # A copy on the wanted device: the caller's instance (maybe on another device,
            # maybe in use elsewhere) is left as it is.
            import copy

            refiner = copy.deepcopy(loaded.refiner).to(dev) if loaded.refiner is not None else None
            loaded = EMDiffuseModel(
                loaded.card, copy.deepcopy(loaded.module).to(dev), refiner=refiner, path=loaded.path
            )
    else:
        if model is None or (isinstance(model, str) and model.strip() == ""):
            if task is None:
                raise EMDiffuseError("say which task the model is for, or name a model")
            model = DEFAULT_MODELS[task]
        path = Path(model)
        if not path.exists():
            named = _find_named(str(model))
            if named is None:
                names = ", ".join(sorted({i.name for i in list_models(task)})) or "none installed"
                what = f"{task} models" if task else "available"
                raise ModelFileError(f"no model named or at '{model}' ({what}: {names})")
            path = named
        if arch is not None and arch not in ARCHITECTURES:
            raise ModelFileError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        key = _cache_key(path, arch, dev)
        with _CACHE_LOCK:
            loaded = _CACHE.get(key) if cache else None
        if loaded is None:
            if path.is_dir():
                loaded = _load_dir(path)
            elif path.suffix.lower() == ".zip":
                dest = Path(tempfile.mkdtemp(prefix="emdiffuse-model-"))
                try:
                    loaded = _load_dir(extract_archive(path, dest))
                finally:  # the weights are in memory now; leave no extracted copy behind
                    shutil.rmtree(dest, ignore_errors=True)
                loaded.path = path
            elif path.suffix.lower() in CHECKPOINT_SUFFIXES:
                if arch is None:
                    raise ModelFileError(
                        f"'{path.name}' is a bare checkpoint: say its architecture with arch= "
                        f"(one of {', '.join(ARCHITECTURES)})"
                    )
                loaded = _load_checkpoint(path, arch)
            else:
                raise ModelFileError(
                    f"'{path}' is not a model directory, a .zip model or a checkpoint (.pth)"
                )
            loaded.to(dev)
            if cache:
                with _CACHE_LOCK:
                    _CACHE[key] = loaded
    if task is not None:
        want, have = task, loaded.card.task
        if want != have and not (want.startswith("isotropic") and have.startswith("isotropic")):
            raise EMDiffuseError(f"model '{loaded.card.name}' is made for {have}, not {want}")
    return loaded
