"""Safe writes into a folder: owned temporary files beside the destination, then renames.

- ``atomic_path`` / ``write_bytes`` / ``write_text``: one file, replaced in one rename. A crash or an exception
  half-way leaves the previous file (or no file), never a truncated one that a later load would half-read.
- ``FolderWrite``: a save of several files (weights, shards, config.json) as one transaction. Every file is first
  staged under a temporary name; a failure while staging (a full disk, a writer error) leaves the folder exactly as
  it was. ``commit`` then writes ``SAVE_MARKER``, renames the staged files in order, removes stale files, and
  removes the marker last: a crash during that short step leaves the marker, and readers refuse the folder
  (``interrupted_save``) instead of loading a mix.

Temporary files are named ``.<name>.<pid>.<random>.tmp``, so they are recognisable and owned: a later save into the
folder removes the ones whose process is dead (``remove_dead_temps``), never those of a live process. Files get the
mode a plain ``open()`` would give them (0666 less the umask), or keep the mode of the file they replace.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import socket
import stat
import time
from pathlib import Path
from typing import Iterable, Iterator

SAVE_MARKER = ".gpt2-save-in-progress.json"
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def umask() -> int:
    """The process umask. Linux shows it in /proc/self/status; elsewhere os.umask() must set it to read it, which
    is process-wide (another thread creating a file at that instant would get the wrong mode), so only a fallback."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this machine) still runs. A zombie (killed, not yet reaped) counts as dead."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    with contextlib.suppress(OSError, IndexError):
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def remove_dead_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that saves killed before they finished left in ``folder`` (their process is
    dead); returns them. Temporary files of live processes (a save running now) are left alone."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        with os.scandir(folder) as entries:
            for entry in entries:
                m = _TEMP.match(entry.name)
                if m and entry.is_file(follow_symlinks=False) and not pid_alive(int(m["pid"])):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed.append(Path(entry.path))
    return removed


def _new_temp(path: Path) -> Path:
    """An empty file beside ``path``, named ``.<name>.<pid>.<random>.tmp``, readable by its owner only until done."""
    for _ in range(100):
        tmp = path.parent / f".{path.name[:200]}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, f"could not create a temporary file beside {path}")


def _final_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)  # a replaced file keeps its mode: a private (0600) file stays so
    except FileNotFoundError:
        return 0o666 & ~umask()  # what open() gives a new file


def write_error(path: str | os.PathLike, error: BaseException) -> OSError:
    """``error`` (an OSError, or a writer's own exception such as SafetensorError or torch.save's RuntimeError) as
    an OSError that names ``path``: "could not write <path>: No space left on device"."""
    text = str(error).strip()
    code = error.errno if isinstance(error, OSError) else None
    if code is None and ("No space left on device" in text or "os error 28" in text):
        code = errno.ENOSPC
    if code is None:  # torch.save says only "unexpected pos ...": look at the disk
        with contextlib.suppress(OSError):
            if os.statvfs(Path(path).parent).f_bavail == 0:
                code = errno.ENOSPC
    reason = os.strerror(code) if code else (text.splitlines()[0][:300] if text else type(error).__name__)
    detail = getattr(error, "strerror", None)
    if code and detail and detail != reason and len(detail) < 100:  # a short detail of our own ("N bytes needed")
        reason = f"{reason} ({detail})"
    out = type(OSError(code, "")) if code else OSError  # keeps the subclass: ENOENT -> FileNotFoundError
    err = out(f"could not write {path}: {reason}")
    err.errno = code
    return err


def ensure_space(path: str | os.PathLike, nbytes: int) -> None:
    """OSError (ENOSPC) naming ``path`` when its disk has less than ``nbytes`` free. For writers that cannot
    report a full disk themselves (HDF5 fails while freeing objects, and h5py then crashes the process)."""
    try:
        disk = os.statvfs(Path(path).parent)
    except OSError:  # no statvfs here: the writer will tell
        return
    free = disk.f_bavail * disk.f_frsize
    if free < nbytes:  # named by the caller's write_error (the final file, not this temporary one)
        raise OSError(errno.ENOSPC, f"{nbytes} bytes needed, {free} free")


@contextlib.contextmanager
def _staged(path: Path, errors: tuple[type[BaseException], ...]) -> Iterator[Path]:
    """A temporary file for ``path``: written by the caller, then synced and given its final mode. On error it is
    removed, and an OSError or one of ``errors`` becomes an OSError naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp(path)
    except OSError as e:  # a full disk (no inode left), a read-only folder
        raise write_error(path, e) from e
    try:
        yield tmp
        with open(tmp, "rb") as f:  # on disk before the rename, so a crash never leaves a renamed empty file
            os.fsync(f.fileno())
        os.chmod(tmp, _final_mode(path))
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, (OSError, *errors)):
            raise write_error(path, e) from e
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, errors: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error it is removed.

    For writers that insist on opening the file themselves (h5py, torch.save). ``errors``: the writer's own
    exception types for a failed write, reported as an OSError naming ``path`` (OSErrors always are).
    """
    path = Path(path)
    with _staged(path, errors) as tmp:
        yield tmp
    try:
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise write_error(path, e) from e


MAX_JSON_DEPTH = 64  # config, index, hparams, vocab and tokenizer files nest 3 or 4 levels; tokenizer.json ~6


def _depth_at_most(data, limit: int) -> bool:
    """Whether ``data`` nests at most ``limit`` containers deep (iterative: a hostile depth cannot recurse)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return True


def read_json(path: str | os.PathLike, what: str = "JSON file", expect: type | None = dict):
    """Parse a JSON file; FileNotFoundError / ValueError naming the file (and ``what`` it should have been).

    ``expect``: the type the top level must be (a dict unless told otherwise). Nesting deeper than
    ``MAX_JSON_DEPTH`` is refused: json itself raises a bare RecursionError near 1000 levels, and anything that
    later walks the data recursively (deepcopy, ==, repr) would do so far sooner.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        deep = not _depth_at_most(data, MAX_JSON_DEPTH)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid {what} ({e})") from None
    except RecursionError:  # deeper than the interpreter's stack
        deep = True
    if deep:
        raise ValueError(f"{path}: not a valid {what} (nested more than {MAX_JSON_DEPTH} levels deep)")
    if expect is not None and not isinstance(data, expect):
        raise ValueError(f"{path}: not a valid {what} (a JSON {type(data).__name__}, expected a {expect.__name__})")
    return data


def from_json_file(cls, path: str | os.PathLike, what: str, overrides: dict):
    """``cls.from_dict(<the file>, **overrides)``, with any error naming the file."""
    data = read_json(path, what)
    try:
        return cls.from_dict(data, **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def sync_folder(folder: Path) -> None:
    """Make renames and removals in ``folder`` durable (a power cut must not reorder them); not every OS can."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def interrupted_save(folder: str | os.PathLike) -> dict | None:
    """None, or what the marker of a save that has not finished says: path, pid, host, started, running (whether
    that process still runs: a save in progress rather than an interrupted one)."""
    marker = Path(folder) / SAVE_MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError):
        info = {}  # a damaged marker is still a marker
    info = info if isinstance(info, dict) else {}
    pid, host = info.get("pid"), info.get("host")
    running = isinstance(pid, int) and (host != socket.gethostname() or pid_alive(pid))  # another host: cannot tell
    return {"path": marker, "pid": pid, "host": host, "started": info.get("started", "at an unknown time"),
            "running": running and pid != os.getpid()}


class FolderWrite:
    """One save into a folder as a transaction: files are staged, then committed in one short step.

    >>> with FolderWrite(folder) as save:
    ...     with save.path(folder / "model.safetensors") as tmp:   # the writer writes tmp
    ...         write(tmp)
    ...     save.write_text(folder / "config.json", text)
    ...     save.commit(remove=[folder / "pytorch_model.bin"])

    Entering removes temporary files that killed saves left (``cleaned``). Leaving with an exception before
    ``commit`` removes the staged files: the folder is as it was. ``commit`` renames the staged files in the order
    they were staged, then removes ``remove`` (``removed``: those that existed), inside the marker.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.staged: list[tuple[Path, Path]] = []  # (temporary, final), in commit order
        self.removed: list[Path] = []
        self.cleaned: list[Path] = []

    def __enter__(self) -> "FolderWrite":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cleaned = remove_dead_temps(self.folder)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.discard()

    def discard(self) -> None:
        """Remove the staged files that were not committed."""
        for tmp, _ in self.staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.staged = []

    @contextlib.contextmanager
    def path(self, target: str | os.PathLike, errors: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
        """A temporary path to write ``target``'s content to; staged for ``commit`` when the block succeeds.
        ``errors`` as for ``atomic_path``."""
        target = Path(target)
        with _staged(target, errors) as tmp:
            self.staged.append((tmp, target))  # before the yield: discarded with the rest if the block fails
            yield tmp

    def write_text(self, target: str | os.PathLike, text: str) -> None:
        with self.path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(text.encode("utf-8"))

    def commit(self, remove: Iterable[Path] = ()) -> None:
        """Rename the staged files into place and remove ``remove``, with the marker written first and removed
        last. A failure before the first rename leaves the folder as it was; after it, the marker stays."""
        marker = self.folder / SAVE_MARKER
        self._claim(marker)
        changed = False
        try:
            for tmp, final in self.staged:
                try:
                    os.replace(tmp, final)
                except OSError as e:
                    raise write_error(final, e) from e
                changed = True
            self.staged = []
            for path in remove:
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise OSError(e.errno, f"could not remove the stale file {path}: {e.strerror}") from e
                changed = True
                self.removed.append(path)
        except BaseException:
            if not changed:
                marker.unlink(missing_ok=True)
            raise
        sync_folder(self.folder)
        marker.unlink()
        sync_folder(self.folder)

    def _claim(self, marker: Path) -> None:
        """Write the marker, exclusively: a live save's marker is an error; a dead one's is taken over."""
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "writing": [p.name for _, p in self.staged]}
        with _staged(marker, ()) as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        try:
            try:
                os.link(tmp, marker)  # fails when a marker exists, where a rename would replace it
            except OSError as e:
                if not isinstance(e, FileExistsError) and not marker.exists():
                    os.replace(tmp, marker)  # no hard links on this file system (FAT, some network ones)
                else:
                    other = interrupted_save(self.folder)
                    if other is not None and other["running"]:
                        raise OSError(errno.EBUSY, f"{self.folder}: another save (pid {other['pid']} on "
                                      f"{other['host']}, started {other['started']}) is writing into this folder; "
                                      f"save again when it has finished (or delete {marker} if none runs)") from None
                    os.replace(tmp, marker)  # an interrupted save's marker: this save completes the folder
            sync_folder(self.folder)  # the marker is on disk before any rename
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
