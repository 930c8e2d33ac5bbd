"""Atomic writes and content hashes: nothing half-written, nothing stale reused."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator


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
    import socket
    import time

    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(str(folder / ".leap.lock")), folder / ".leap.lock.json"
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        try:
            holder = json.loads(owner.read_text(encoding="utf-8"))
            who = f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
        except (OSError, ValueError, KeyError):
            who = "another process"
        raise ValueError(f"{folder}: another {what} holds it ({who}); wait for it to finish "
                         f"(--wait) or use another output dir") from None
    try:
        write_json_atomic(owner, {"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        yield folder
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
    import shutil

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
