"""Opening the database file: access checks, private creation, connection settings, and
sqlite3 errors turned into one clear line. No SQL from user input (PRAGMAs take ints only)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from evicctl.errors import StoreError

WRITER_BUSY_TIMEOUT_MS = 5000
READER_BUSY_TIMEOUT_MS = 2000
NO_DB_HINT = "start a manager (evicctl demo) or pass --db"


def translate_error(exc: sqlite3.Error, path: Path | str) -> StoreError:
    """Turn an sqlite3 error into one clear line naming the file and what to do."""
    msg = str(exc)
    low = msg.lower()
    if "locked" in low or "busy" in low:
        return StoreError(f"database {path} is locked by another process ({msg}); try again")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return StoreError(f"database {path} is corrupt or not an evicctl database ({msg})")
    if "readonly" in low or "read-only" in low:
        return StoreError(f"cannot write database {path}: read-only or permission denied ({msg})")
    if "unable to open" in low:
        return StoreError(f"cannot open database {path}: {_access_problem(Path(path)) or msg}")
    return StoreError(f"database error on {path}: {msg}")


def _access_problem(path: Path) -> str | None:
    try:
        _exists(path, write=False)
    except StoreError as exc:
        return str(exc).rsplit(": ", 1)[-1]
    return None


def _exists(path: Path, *, write: bool) -> bool:
    """Whether the database file is there, raising one clear line if it cannot be used."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except PermissionError:
        raise StoreError(f"cannot open database {path}: permission denied on a directory above it") from None
    except NotADirectoryError:
        raise StoreError(f"cannot open database {path}: a parent is not a directory") from None
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"cannot open database {path}: it is a directory")
    if not os.access(path, os.R_OK | (os.W_OK if write else 0)):
        raise StoreError(f"cannot open database {path}{' for writing' if write else ''}: permission denied")
    return True


def connect_writer(path: Path, create: bool, busy_timeout_ms: int) -> sqlite3.Connection:
    if not _exists(path, write=True):
        if not create:
            raise StoreError(f"no database at {path}; {NO_DB_HINT}")
        _create_private(path)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"database {path} could not switch to WAL mode (got {mode})")
        # WAL + NORMAL: durable across process crashes, one fsync per checkpoint, not per commit.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private(path: Path) -> None:
    """Create the directory (0700) and an empty file (0600): whoever can write it steers the manager."""
    parent = path.parent
    try:
        parent.mkdir(mode=0o700, parents=True)
        os.chmod(parent, 0o700)  # mkdir's mode is masked by the umask; make it exact
    except FileExistsError:
        pass  # an existing directory keeps its mode: it may be shared (e.g. /tmp)
    except PermissionError as exc:
        raise StoreError(f"cannot create directory {parent}: permission denied") from exc
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except PermissionError as exc:
        raise StoreError(f"cannot create database {path}: permission denied") from exc
    os.close(fd)
    os.chmod(path, 0o600)


def connect_readonly(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    if not _exists(path, write=False):
        raise StoreError(f"no database at {path}; {NO_DB_HINT}")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA query_only = 1")
        # `ls` sorts every context: keep the sorter's runs in memory, not in temp files.
        conn.execute("PRAGMA temp_store = MEMORY")
    except BaseException:
        conn.close()
        raise
    return conn


def check_private(path: Path, what: str) -> None:
    """StoreError unless `path` (the database file, a disk tier's folder) is its owner's alone:
    owned by this user, nothing for group or others. The database steers the manager and the
    folders hold users' KV (their documents, as tensors): checked at every start, never fixed
    silently (a mode someone widened on purpose is theirs to narrow)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # created private on first use
    if st.st_uid != os.getuid():
        raise StoreError(f"{what} {path} belongs to uid {st.st_uid}, not to this user ({os.getuid()}): refusing to use it")
    if st.st_mode & 0o077:
        private = "700" if path.is_dir() else "600"
        raise StoreError(f"{what} {path} is open to group or others (mode {st.st_mode & 0o777:o}): "
                         f"refusing to use it; make it private with `chmod {private} {path}`")  # fmt: skip


def check_parent_not_shared_writable(path: Path, what: str) -> None:
    """StoreError if the folder holding `path` lets others write without the sticky bit: they
    could replace the file. A sticky shared folder (/tmp) is fine; the file itself is private."""
    parent = path.parent
    try:
        st = parent.stat()
    except FileNotFoundError:
        return
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise StoreError(f"the folder of {what} {path} is writable by others without the sticky bit "
                         f"(mode {st.st_mode & 0o777:o}): refusing to use it; `chmod go-w {parent}`")  # fmt: skip
