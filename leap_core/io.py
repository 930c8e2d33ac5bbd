"""Atomic writes and content hashes: nothing half-written, nothing stale reused."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from filelock import FileLock, Timeout


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp's 0600 would hide caches and reports from other users
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | os.PathLike, data: Any) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


# An absolute POSIX path inside a string, of two components or more, where a token starts: at the start or after a
# space, quote, backtick, bracket, "=" or ","; so "and/or", "1/2", "s3://b/k", "models:/m/1" and "<work>/x" stay.
# file:// and sqlite:/// URIs of such paths are matched whole (group 1: the scheme, group 2: the path).
_ABSOLUTE_PATH = re.compile(r"(?<![^\s\"'`(\[=,])(file://|sqlite:///)?(/(?:[\w.@+=-]+/)+[\w.@+=-]*)")


def portable_path(path: str, base: str | os.PathLike | None = None) -> str:
    """An absolute path as a report committed from this machine may show it: relative to `base` (the run's or work
    folder); an installed package's file as site-packages/<package>/...; relative to the working directory;
    under the home folder as ~/...; anything else, and a relative path, unchanged (a report of a run outside all of
    these names where it lies; write it with base set to that run's folder to commit it)."""
    if not os.path.isabs(path):
        return path
    target = Path(os.path.normpath(path))
    if base is not None and target.is_relative_to(Path(base).resolve()):
        return str(target.relative_to(Path(base).resolve())) or "."
    if "site-packages" in target.parts:  # where the environment lies is this machine's business
        return str(Path(*target.parts[target.parts.index("site-packages"):]))
    if target.is_relative_to(Path.cwd()):
        return str(target.relative_to(Path.cwd())) or "."
    if target.is_relative_to(Path.home()):
        return str(Path("~") / target.relative_to(Path.home()))
    return path  # nothing another machine shares: kept, and the committed-reports test names it


def portable_paths(data: Any, base: str | os.PathLike | None = None) -> Any:
    """`data` (JSON-like) with every absolute path inside its strings made portable (portable_path), keys too."""
    if isinstance(data, str):
        return _ABSOLUTE_PATH.sub(lambda match: _portable_match(match, base), data)
    if isinstance(data, dict):
        return {portable_paths(key, base): portable_paths(value, base) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [portable_paths(item, base) for item in data]
    return data


def _portable_match(match: re.Match, base: str | os.PathLike | None) -> str:
    scheme, path = match.group(1), portable_path(match.group(2), base)
    if os.path.isabs(path):  # kept as it was, scheme and all
        return match.group(0)
    return f"sqlite:///{path}" if scheme == "sqlite:///" else path  # sqlite:///x is relative; file:// has no such


def absolute_paths_in(text: str) -> list[str]:
    """The absolute paths a text holds, URIs of them included (what portable_paths would rewrite)."""
    return [match.group(0) for match in _ABSOLUTE_PATH.finditer(text)]


def write_report_files(data: Any, json_target: str | os.PathLike | None,
                       markdown_target: str | os.PathLike | None = None, render: Any = None,
                       base: str | os.PathLike | None = None) -> tuple[Any, str | None]:
    """A report's JSON and (render(data) to markdown_target) its markdown, both with portable paths, so what gets
    committed never names this machine's folders. Returns (the portable data, the markdown or None)."""
    portable = portable_paths(data, base)
    markdown = render(portable) if render is not None else None
    if json_target is not None:
        write_json_atomic(json_target, portable)
    if markdown_target is not None and markdown is not None:
        write_text_atomic(markdown_target, markdown)
    return portable, markdown


def cache_root() -> Path:
    """Where models assembled from parts, tiny test models and decompressed data are kept."""
    return Path(os.environ.get("LEAP_CACHE_DIR") or Path.home() / ".cache" / "leap").expanduser()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None,
                  exclude: tuple[str, ...] = ()) -> str:
    """Hash of every file's relative name and content under `path` (sorted, so order-independent).

    suffixes: only files ending so; exclude: relative names left out.
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if (suffixes is not None and file.suffix not in suffixes) or str(file.relative_to(root)) in exclude:
            continue
        digest.update(str(file.relative_to(root)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def sha256_strings(items: list[str]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, wait: bool = False, what: str = "run") -> Iterator[Path]:
    """Hold `<folder>/.leap.lock` (filelock) while a writer works in `folder`; a second writer is refused.

    The holder's pid, host and start time go to `.leap.lock.json`, so the refusal says who holds it.
    wait=True blocks until the holder is done instead.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _hold(folder, folder / ".leap.lock", folder / ".leap.lock.json", wait, what):
        yield folder


@contextlib.contextmanager
def _hold(folder: Path, lock_file: Path, owner: Path, wait: bool, what: str,
          hint: str = "wait for it to finish (--wait) or use another output dir") -> Iterator[None]:
    """Hold `lock_file` (filelock), its holder recorded in `owner`; refused with a line naming the holder."""

    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        try:
            holder = json.loads(owner.read_text(encoding="utf-8"))
            who = f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
        except (OSError, ValueError, KeyError):
            who = "another process"
        raise ValueError(f"{folder}: another {what} holds it ({who}); {hint}") from None
    try:
        write_json_atomic(owner, {"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir_beside(target: str | os.PathLike) -> Path:
    """A new hidden folder beside `target` (to fill, then rename onto it), readable as the umask allows.

    mkdtemp makes 0700 folders: renamed into place they would hide a model from a serving user.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete what a killed writer left in `folder` (atomic_path's `.*.tmp` files, temp_dir_beside's folders).

    Call it only while holding the folder's lock (folder_lock): then no live writer owns them.
    """

    folder, removed = Path(folder), []
    for path in folder.glob(".*"):
        if path.name.startswith(".leap.lock"):
            continue
        if path.is_file() and path.suffix == ".tmp":
            path.unlink(missing_ok=True)
        elif path.is_dir() and path.name.count(".") >= 2:  # ".model.abc123": temp_dir_beside's pattern
            shutil.rmtree(path, ignore_errors=True)
        else:
            continue
        removed.append(path)
    return removed


# A folder's writers in this process and thread: a writer nested in another (calibrate -> save_policy) reuses the
# hold instead of refusing itself (flock refuses a second descriptor of the same file, even in one process).
_WRITERS: set[tuple[str, int]] = set()


@contextlib.contextmanager
def writer_lock(folder: str | os.PathLike, wait: bool = False, what: str = "writer") -> Iterator[Path]:
    """Hold the lock of a model or output folder while this process writes it; a second writer is refused.

    The lock is `.<name>.leap.lock` beside the folder, not in it: the folder need not exist yet, and its hashed,
    shipped content (model_fingerprint, file_ref) never gains a lock file. Re-entrant within one thread.
    wait=True blocks until the holder is done instead.
    """

    folder = Path(folder).resolve()  # one lock per folder, however a writer names it
    key = (str(folder), threading.get_ident())
    if key in _WRITERS:
        yield folder
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _hold(folder, folder.parent / f".{folder.name}.leap.lock", folder.parent / f".{folder.name}.leap.lock.json",
               wait, what, "wait for it to finish, then run this again"):
        _WRITERS.add(key)
        try:
            yield folder
        finally:
            _WRITERS.discard(key)


def plain_name(name: str, what: str = "--name") -> str:
    """`name` itself if it is a plain file name (no path separator, not "." or "..", no NUL); else a ValueError.

    A report name becomes part of a path: "../../x" or "/etc/x" would write outside the report folder.
    """
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or os.sep in name or (os.altsep and os.altsep in name)):
        raise ValueError(f"{what} {name!r}: must be a plain name (no path separators, not '.' or '..')")
    return name


MANIFEST_FILE = ".leap_manifest"  # no suffix: model_fingerprint hashes only .json/.safetensors/... files


def folder_files(folder: str | os.PathLike) -> list[str]:
    """Every file (and symlink) under `folder`, as sorted POSIX relative paths, the manifest itself left out."""
    root = Path(folder)
    found = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink() or not p.is_dir())
    return sorted(name for name in found if name != MANIFEST_FILE)


def write_manifest(folder: str | os.PathLike, kind: str) -> Path:
    """`<folder>/.leap_manifest` (JSON): the kind of leap folder and every file's relative path and sha256, so a
    later command can tell a folder leap wrote (and may replace) from one holding a user's files."""
    root = Path(folder)
    files = {name: sha256_file(root / name) for name in folder_files(root)}
    target = root / MANIFEST_FILE
    write_json_atomic(target, {"kind": kind, "files": files})
    return target


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest ({"kind", "files"}), None when it has none or it is not one."""
    file = Path(folder) / MANIFEST_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str) or not isinstance(data.get("files"), dict):
        return None
    return data


def note_in_manifest(folder: str | os.PathLike, *names: str) -> None:
    """Record files leap has just written into a leap folder (leap_exit.json after calibrate --save) in its
    manifest, so the folder stays replaceable; a folder without a manifest is left as it is."""
    found = read_manifest(folder)
    if found is None:
        return
    root = Path(folder)
    for name in names:
        if (root / name).is_file():
            found["files"][name] = sha256_file(root / name)
    write_json_atomic(root / MANIFEST_FILE, found)


def check_replaceable(target: str | os.PathLike, kind: str) -> None:
    """Return only if `target` may be replaced by a leap `kind` folder: it is absent, an empty folder, or a leap
    folder of that kind whose manifest lists every file in it, each unchanged. Else a one-line ValueError."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise ValueError(f"{target}: exists and is not a folder: not overwriting it (choose a new --out)")
    if not any(target.iterdir()):
        return
    found = read_manifest(target)
    if found is None:
        raise ValueError(f"{target}: not empty and not a leap {kind} (no {MANIFEST_FILE}): not overwriting it "
                         "(choose a new --out)")
    if found["kind"] != kind:
        raise ValueError(f"{target}: a leap {found['kind']} folder, not a leap {kind}: not overwriting it "
                         "(choose a new --out)")
    files = folder_files(target)
    unlisted = [name for name in files if name not in found["files"] or (target / name).is_symlink()]
    if unlisted:
        raise ValueError(f"{target}: holds files leap did not write ({', '.join(unlisted[:3])}"
                         f"{' ...' if len(unlisted) > 3 else ''}): not overwriting it (choose a new --out)")
    changed = [name for name in files if sha256_file(target / name) != found["files"][name]]
    if changed:
        raise ValueError(f"{target / changed[0]}: changed since leap wrote it: not overwriting {target} "
                         "(choose a new --out)")


def replace_folder(target: str | os.PathLike, build: Callable[[Path], Any], kind: str, wait: bool = False) -> Path:
    """`target` as build(path) makes it, with a manifest, swapped in whole; never deleting what leap did not write.

    build gets a path that does not exist yet, in a staging folder beside `target`, and must create the folder
    there. `target` may be absent, empty or a replaceable leap folder of this `kind` (check_replaceable), checked
    before the build and again before the swap, under the folder's writer_lock. The old folder is moved into the
    staging folder this call made, and only that is deleted: nothing named `.old` or otherwise is touched.
    """

    target = Path(target)
    check_replaceable(target, kind)  # before a long build: refuse at once
    with writer_lock(target, wait=wait, what=f"writer of this {kind}"):
        staging = temp_dir_beside(target)
        try:
            built = staging / target.name
            build(built)
            if not built.is_dir():
                raise ValueError(f"{built}: the {kind} was not written")
            write_manifest(built, kind)
            check_replaceable(target, kind)  # a user's file may have appeared during the build
            _swap_in(built, target, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _swap_in(built: Path, target: Path, staging: Path) -> None:
    """Rename `built` onto `target`; an existing target is first moved into `staging` (put back on failure)."""
    if not target.exists():
        os.replace(built, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=".previous.", dir=staging))
    os.replace(target, aside)  # an empty folder is renamed onto: POSIX allows it
    try:
        os.replace(built, target)
    except OSError:
        os.replace(aside, target)
        raise


def save_checked_array(path: str | os.PathLike, array: Any) -> None:
    """The array as .npy, then its sha256 beside it (`.sha256`), each written atomically.

    An array without its checksum (a kill between the two writes) is never trusted: load_checked_array refuses it.
    """

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        digest = sha256_file(tmp)
    write_text_atomic(path.with_suffix(".sha256"), digest + "\n")


def load_checked_array(path: str | os.PathLike, shape: tuple[int, ...], dtype: str) -> tuple[Any, str | None]:
    """(array, None) when save_checked_array wrote exactly this file (its sha256 matches) with this shape and dtype,
    all finite; else (None, what is wrong), and the caller computes it again."""

    path = Path(path)
    if not path.is_file():
        return None, "missing"
    sum_path = path.with_suffix(".sha256")
    recorded = sum_path.read_text(encoding="utf-8").strip() if sum_path.is_file() else ""
    if not recorded:
        return None, "no checksum recorded"
    if sha256_file(path) != recorded:
        return None, "content does not match its checksum"
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        return None, f"unreadable ({err})"
    if array.dtype != np.dtype(dtype) or array.shape != shape:
        return None, f"{array.dtype} {array.shape}, want {dtype} {shape}"
    if not np.isfinite(array).all():
        return None, "not finite (NaN or inf)"
    return array, None
