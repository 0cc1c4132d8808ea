"""Where a model's files are: a local folder, the local Hugging Face cache, or (optionally) a download.

``resolve_file(name_or_path, filename)`` answers with a local path or None. The order is the one transformers users
know: a local folder of that name wins; then the model shipped in the package (``common.embedded``: its name only,
offline); then a snapshot in the Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub or
~/.cache/huggingface/hub, read offline); then, only when huggingface_hub is installed and neither HF_HUB_OFFLINE nor
TRANSFORMERS_OFFLINE is set, a download into that cache. Environment variables are read at call time.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import tempfile
from urllib.parse import urlparse
from pathlib import Path

from . import embedded

_TRUTHY = {"1", "true", "yes", "on"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


# Files that make a folder a model folder. A folder without any of them (say, a source tree named "gpt2" in the
# working directory) does not shadow the model name.
MODEL_FILES = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack", "hparams.json", "checkpoint",
    "vocab.json", "tokenizer_config.json",
)


def local_folder(name_or_path: str | os.PathLike) -> Path | None:
    """``name_or_path`` as a local model folder, or None when it is not a folder holding model files."""
    folder = Path(name_or_path)
    if folder.is_dir() and (any((folder / f).is_file() for f in MODEL_FILES) or any(folder.glob("*.index"))):
        return folder
    return None


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub computes it."""
    if cache_dir is not None:
        return Path(cache_dir)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name


def cached_snapshot(repo_id: str, revision: str | None = None, cache_dir=None) -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` (a branch, tag or commit) in the cache, or None."""
    if not looks_like_repo_id(repo_id):
        return None
    repo_dir = hub_cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    revision = revision or "main"
    if _COMMIT.match(revision):
        commit = revision
    else:
        ref = repo_dir / "refs" / revision
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    snapshot = repo_dir / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def offline_help(cache_dir=None) -> str:
    """How to work without a network, for messages about a hub that cannot be reached."""
    return (f"to work offline, give a local folder, or set HF_HUB_OFFLINE=1 (or pass local_files_only=True / "
            f"--local-files-only) to use only what is in the Hugging Face cache {str(hub_cache_dir(cache_dir))!r}; "
            f"a preset name such as 'gpt2' resolves its config offline, but its weights need one download")


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the hub cannot be reached: LocalEntryNotFoundError (no answer and no cached
    copy), OfflineModeIsEnabled (its own HF_HUB_OFFLINE, read when it was imported), and the HTTP client's
    connection errors (requests before huggingface_hub 1.0, httpx since)."""
    from huggingface_hub.utils import LocalEntryNotFoundError, OfflineModeIsEnabled

    errors: list[type[BaseException]] = [LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError,
                                         TimeoutError]
    for module, names in (("requests", ("ConnectionError", "Timeout")), ("httpx", ("TransportError",))):
        try:
            imported = importlib.import_module(module)
        except ImportError:
            continue
        errors += [getattr(imported, name) for name in names if hasattr(imported, name)]
    return tuple(errors)


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_host_unresolvable() -> str | None:
    """Why the hub's host name cannot be resolved, or None when it can (or when a proxy resolves names for us).

    Without a network the name lookup fails at once, while huggingface_hub's HEAD request would retry five times
    with back-off (about 20 s and five lines of retry messages) before giving up: one lookup tells the same sooner.
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    host = urlparse(endpoint).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        return f"cannot resolve {host!r}: {e}"
    return None


def _download(repo_id: str, filename: str, revision: str | None, cache_dir) -> Path | None:
    """Download one file; None when the hub says it does not exist. A hub that cannot be reached is a
    ConnectionError at once: the caller tries several file names, and each try would otherwise wait through
    huggingface_hub's own retries and back-off (about 20 s) only to fail the same way."""
    try:
        import huggingface_hub
        from huggingface_hub.utils import EntryNotFoundError
    except ImportError:
        return None
    unresolved = hub_host_unresolvable()
    if unresolved is not None:
        raise ConnectionError(f"{repo_id!r} is not on disk and the Hugging Face hub could not be reached (looking "
                              f"for {filename}: {unresolved}); {offline_help(cache_dir)}")
    try:
        path = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    except _connection_errors() as e:
        # LocalEntryNotFoundError (a subclass of EntryNotFoundError, so caught first): the hub did not answer and
        # the cache has no copy. huggingface_hub's OfflineModeIsEnabled: its HF_HUB_OFFLINE, read at its import.
        cause = e.__cause__ or e
        raise ConnectionError(f"{repo_id!r} is not on disk and the Hugging Face hub could not be reached (looking "
                              f"for {filename}: {type(cause).__name__}: {' '.join(str(cause).split())[:200]}); "
                              f"{offline_help(cache_dir)}") from e
    except EntryNotFoundError:
        return None
    return Path(path)


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path | None:
    """The local path of ``filename`` for ``name_or_path``, or None when it is nowhere to be found.

    A local folder named ``name_or_path`` is authoritative: a file missing there is missing, even if a repository of
    the same name exists on the hub.
    """
    folder = local_folder(name_or_path)
    if folder is not None:
        path = folder / filename
        return path if path.is_file() else None
    folder = embedded.folder(name_or_path)
    if folder is not None:  # the package's own model: authoritative like a local folder, never a hub lookup
        path = folder / filename
        return path if path.is_file() else None
    name = str(name_or_path)
    snapshot = cached_snapshot(name, revision, cache_dir)
    if snapshot is not None:
        path = snapshot / filename
        if path.is_file():
            return path
        if (snapshot.parent.parent / ".no_exist" / snapshot.name / filename).exists():
            return None
    if local_files_only or is_offline() or not looks_like_repo_id(name):
        return None
    return _download(name, filename, revision, cache_dir)


def push_to_hub(save, repo_id: str, *, commit_message: str, private: bool | None = None, token=None,
                create_pr: bool = False, revision: str | None = None):
    """Write with ``save(folder)`` into a temporary folder, then upload it to the hub repository ``repo_id``
    (created if it does not exist) in one commit; returns huggingface_hub's CommitInfo. What the objects'
    ``push_to_hub`` methods call, as transformers' do."""
    if not isinstance(repo_id, str) or not looks_like_repo_id(repo_id):
        raise ValueError(f"repo_id must be a hub repository name such as 'user/my-gpt2', got {repo_id!r}")
    if is_offline():
        raise ValueError("push_to_hub: offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)")
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError("push_to_hub needs huggingface_hub: pip install 'gpt2[hub]'") from None
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        save(Path(folder))
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                 revision=revision, create_pr=create_pr)


def describe_lookup(name_or_path: str | os.PathLike, cache_dir=None) -> str:
    """Where resolve_file looked, for error messages."""
    if local_folder(name_or_path) is not None:
        return f"the folder {str(name_or_path)!r}"
    if embedded.folder(name_or_path) is not None:
        return f"the model shipped in the package ({str(embedded.FOLDER)!r})"
    where = f"no model folder {str(name_or_path)!r}, the Hugging Face cache {str(hub_cache_dir(cache_dir))!r}"
    if not looks_like_repo_id(str(name_or_path)):
        return where
    if is_offline():
        return where + " (offline: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return where + " (no download: huggingface_hub is not installed; pip install 'gpt2[hub]')"
    return where + " and the Hugging Face hub"
