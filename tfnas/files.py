"""Paths and file operations of tfnas: a run directory, a configuration or a descriptor may be a local
path or a URL (`gs://bucket/run`: TPUs write their checkpoints to GCS only; `ram://`, `s3://`, ...).

`path()` is the one place that turns a user's string into a path. A local path stays a pathlib.Path and
keeps Python's own file operations, so it behaves as it always did (relative paths, the OSError subclasses
that the configuration loader and the command line report, no TensorFlow needed to read a configuration).
A URL becomes a `UrlPath`, which offers the part of pathlib's interface that tfnas uses on top of
tf.io.gfile: pathlib cannot hold a URL (it folds `gs://b/x` into `gs:/b/x`), and only TensorFlow's file
systems reach GCS. Code written against that interface works on both; what pathlib lacks (atomic writes,
removing a tree, a temporary directory, moving a tree) is a function here that serves both kinds.

Kept free of TensorFlow at import: the configuration loader imports it before TF. TF is imported when a
URL is first touched.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence

from tfnas.errors import UserError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)


def is_url(p: str | os.PathLike) -> bool:
    """Whether `p` names a file system by scheme (gs://, s3://, ram://, ...), which only tf.io.gfile reaches."""
    return isinstance(p, UrlPath) or bool(_URL.match(os.fspath(p)))


@contextlib.contextmanager
def _as_os_errors(where: object) -> Iterator[None]:
    """TensorFlow's file errors as the OSError subclasses pathlib raises, so callers catch one family
    (`except OSError`, the command line's FileNotFoundError) whatever the file system. A scheme that
    TensorFlow has no file system for is the user's to fix, so it is a UserError (one line, exit code 2)."""
    import tensorflow as tf
    try:
        yield
    except tf.errors.NotFoundError:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(where)) from None
    except tf.errors.AlreadyExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(where)) from None
    except tf.errors.PermissionDeniedError:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(where)) from None
    except tf.errors.UnimplementedError as err:
        raise UserError(f"{err.message}: TensorFlow has gs:// and ram:// built in, other schemes need a "
                        "file-system plugin (such as tensorflow-io's)") from None
    except tf.errors.OpError as err:
        raise OSError(errno.EIO, err.message or type(err).__name__, str(where)) from None


def _gfile():
    import tensorflow as tf
    return tf.io.gfile


class UrlPath:
    """A file or directory named by URL, with pathlib's methods that tfnas uses, on tf.io.gfile.

    The text after the scheme is split on "/" (empty and "." parts dropped, as pathlib does); its first
    part (the bucket) is the root, which is its own parent. `os.fspath` gives the URL, so a UrlPath passes
    wherever `str | os.PathLike` is taken and into TensorFlow's own writers with its scheme intact."""

    __slots__ = ("_scheme", "_parts")

    def __init__(self, url: str | os.PathLike):
        if isinstance(url, UrlPath):
            self._scheme, self._parts = url._scheme, url._parts
            return
        match = _URL.match(os.fspath(url))
        if not match:
            raise ValueError(f"{url!r} is not a URL (scheme://...)")
        self._scheme = match.group(1)
        self._parts = tuple(p for p in match.group(2).split("/") if p not in ("", "."))

    @classmethod
    def _of(cls, scheme: str, parts: tuple[str, ...]) -> "UrlPath":
        new = cls.__new__(cls)
        new._scheme, new._parts = scheme, parts
        return new

    def __str__(self) -> str:
        return self._scheme + "/".join(self._parts)

    __fspath__ = __str__

    def __repr__(self) -> str:
        return f"UrlPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: "UrlPath") -> bool:
        return str(self) < str(other)

    def __truediv__(self, other: str | os.PathLike) -> "UrlPath":
        other = os.fspath(other)
        if is_url(other):
            return UrlPath(other)
        return self._of(self._scheme, self._parts + tuple(p for p in other.split("/") if p not in ("", ".")))

    @property
    def name(self) -> str:
        return self._parts[-1] if len(self._parts) > 1 else ""

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> "UrlPath":
        return self._of(self._scheme, self._parts[:-1]) if len(self._parts) > 1 else self

    def resolve(self) -> "UrlPath":
        """The same URL with ".." parts applied (URLs are absolute and have no links to follow)."""
        parts: list[str] = []
        for p in self._parts:
            if p != "..":
                parts.append(p)
            elif len(parts) > 1:
                parts.pop()
        return self._of(self._scheme, tuple(parts))

    def exists(self) -> bool:
        with _as_os_errors(self):
            return _gfile().exists(str(self))

    def is_dir(self) -> bool:
        with _as_os_errors(self):
            return _gfile().isdir(str(self))

    def is_file(self) -> bool:
        return self.exists() and not self.is_dir()

    def read_bytes(self) -> bytes:
        with _as_os_errors(self), _gfile().GFile(str(self), "rb") as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """A plain write: on GCS the object appears whole when the file closes, elsewhere it may not."""
        with _as_os_errors(self), _gfile().GFile(str(self), "wb") as f:
            f.write(data)
        return len(data)

    def write_text(self, data: str, encoding: str = "utf-8") -> int:
        self.write_bytes(data.encode(encoding))
        return len(data)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if self.is_dir():
            if not exist_ok:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(self))
            return
        if not parents and not self.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.parent))
        with _as_os_errors(self):
            _gfile().makedirs(str(self))

    def iterdir(self) -> Iterator["UrlPath"]:
        with _as_os_errors(self):
            names = _gfile().listdir(str(self))
        for name in names:  # GCS marks sub-directories with a trailing "/"
            yield self / name.rstrip("/")

    def glob(self, pattern: str) -> Iterator["UrlPath"]:
        with _as_os_errors(self):
            found = _gfile().glob(f"{self}/{pattern}")
        for p in sorted(found):
            yield UrlPath(p)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            with _as_os_errors(self):
                _gfile().remove(str(self))
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rename(self, target: str | os.PathLike) -> "UrlPath":
        """One object renamed (GCS: copied, then deleted); a directory's contents need `move_tree`."""
        with _as_os_errors(self):
            _gfile().rename(str(self), os.fspath(target), overwrite=False)
        return UrlPath(target)


AnyPath = pathlib.Path | UrlPath


def path(p: str | os.PathLike) -> AnyPath:
    """`p` as a path of its file system: a UrlPath for a URL, otherwise a pathlib.Path exactly as given."""
    if isinstance(p, (pathlib.Path, UrlPath)):
        return p
    return UrlPath(p) if is_url(p) else pathlib.Path(p)


_writes = True


def set_writer(writes: bool) -> None:
    """Whether this process writes the run's files. Only the workers of a multi-worker run other than its
    chief are told not to (tfnas.distribute, when the process joins the cluster): they train the same
    steps, and every file they would write the chief writes. The writes of this module (write_atomic,
    makedirs, remove, rmtree) do nothing on such a worker; what else the run writes (TF checkpoints,
    summaries, the export) asks `writes()`."""
    global _writes
    _writes = bool(writes)


def writes() -> bool:
    return _writes


def write_atomic(target: str | os.PathLike, data: bytes | str) -> None:
    """Writes `data` to a temporary file beside `target`, then renames it over `target`, so that readers
    see the old file or the new one, never a part (after a crash too). Creates the parent directories.

    On a local disk the rename is atomic (one file system) and the file is readable by all (0644), as a
    plain write would leave it; mkstemp alone creates 0600. On other file systems the temporary object is
    renamed with tf.io.gfile.rename(overwrite=True). GCS has no atomic rename (it copies, then deletes),
    but its objects only ever appear whole, so readers still never see a part; a crash may leave a
    `.<name>.*.tmp` object behind."""
    if not _writes:
        return
    target = path(target)
    if isinstance(data, str):
        data = data.encode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(target, UrlPath):
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.write_bytes(data)
            with _as_os_errors(target):
                _gfile().rename(str(tmp), str(target), overwrite=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def makedirs(directory: str | os.PathLike) -> None:
    """Creates a directory and its parents where missing (on the process that writes the run's files)."""
    if _writes:
        path(directory).mkdir(parents=True, exist_ok=True)


def remove(file: str | os.PathLike) -> None:
    """Removes a file if it is there (on the process that writes the run's files)."""
    if _writes:
        path(file).unlink(missing_ok=True)


def rmtree(directory: str | os.PathLike) -> None:
    """Removes a directory and everything in it (on the process that writes the run's files)."""
    if not _writes:
        return
    directory = path(directory)
    if isinstance(directory, UrlPath):
        with _as_os_errors(directory):
            _gfile().rmtree(str(directory))
    else:
        shutil.rmtree(directory)


@contextlib.contextmanager
def temporary_directory(parent: str | os.PathLike, prefix: str) -> Iterator[AnyPath]:
    """A new directory inside `parent` (which must exist), removed with what is left in it on exit: where
    a result is built before `move_tree` puts it in place."""
    parent = path(parent)
    if isinstance(parent, pathlib.Path):
        with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as tmp:
            yield pathlib.Path(tmp)
        return
    tmp = parent / f"{prefix}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        if tmp.exists():
            rmtree(tmp)


def move_tree(source: str | os.PathLike, target: str | os.PathLike, last: Sequence[str] = ()) -> None:
    """Moves the directory `source` to `target`, which must not exist.

    On a local disk this is one rename: atomic, `target` is complete or absent. Other file systems have no
    directory rename (GCS renames object by object; TF's ram:// loses a renamed directory's contents), so
    there every file is renamed on its own, those named in `last` (paths relative to `source`) after all
    the others: a reader that waits for them finds the rest already in place."""
    source, target = path(source), path(target)
    if isinstance(source, pathlib.Path) and isinstance(target, pathlib.Path):
        source.rename(target)
        return
    if target.exists():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    moves = []
    with _as_os_errors(source):
        for directory, _, names in _gfile().walk(str(source)):
            relative = directory[len(str(source)):].strip("/")
            path(target / relative).mkdir(parents=True, exist_ok=True)
            moves += [posixpath.join(relative, name) for name in names]
    for relative in sorted(moves, key=lambda r: r in last):
        with _as_os_errors(source / relative):
            _gfile().rename(str(source / relative), str(target / relative), overwrite=False)
