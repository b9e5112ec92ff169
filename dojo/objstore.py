"""The object-store layer under the storage root: one small interface (``Store``) over a local folder
(``LocalStore``) or any fsspec URL (``FsspecStore``: s3fs for ``s3://``), chosen by ``open_store(url, options)``.

Keys are '/'-separated paths relative to the root (``queue/normal/x.jsonl``); ``..``, empty segments, a leading
'/', backslashes and this module's own temp/lock names are refused. S3 has no rename, so nothing here relies on
one for correctness; the three commit primitives are:

- **whole-object writes** (``write``, ``put_file``): a reader sees the old object or the new one, never a mix
  (local: a temp file beside it + ``os.replace``; S3: one PUT, or a multipart upload, which appears only when
  it completes);
- **exclusive create** (``create``): succeeds for exactly one of any number of concurrent callers (local: a
  complete temp file ``os.link``-ed to the key, which fails if it exists; S3: PutObject with
  ``IfNoneMatch='*'``) — queue claims;
- **compare-and-swap** (``read_versioned`` + ``replace_if``, and ``update_json`` looping over them): a write
  that lands only if the object is still the version that was read (S3: PutObject ``IfMatch=<ETag>``; local:
  dojo.storage.locked's flock beside the key, compare, ``os.replace``) — pointers and shared state files.

On top of them, **committed trees** (checkpoints): ``upload_tree`` writes every file under ``prefix/`` and then,
LAST, the commit marker ``prefix/.manifest.json`` (the shape ``model/checkpoint.py`` writes: files, sizes,
sha256); ``committed``/``list_committed`` see only trees whose marker exists and whose objects have the listed
sizes, and ``fetch_tree`` gives a verified local copy (downloaded into a temp folder, checked, then renamed into
the cache, so a partial download is never used).

S3 set-up: ``storage.root: s3://bucket/prefix``; ``storage.options`` go to fsspec/s3fs as keyword arguments;
left out, the endpoint, region and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles), which
botocore reads itself. Conditional writes need an S3 (or S3-compatible) service that implements them: AWS S3
does (2024), so do recent MinIO and moto. Messages name keys and URLs; they never contain options or
credentials. Tested against moto's S3 server and a local folder alike: ``pytest tests/test_objstore.py``.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import BinaryIO, Callable, Protocol
from urllib.parse import urlsplit, urlunsplit

from dojo.config import is_url
from dojo.storage import MAX_JSON_DEPTH, MAX_STATE_BYTES, StateError, _depth, locked, open_regular, sha256_file

MANIFEST = ".manifest.json"     # the commit marker; same name and shape as model/checkpoint.py's manifest
MANIFEST_VERSION = 1
_TMP = ".objstore-tmp-"          # in temp files' names: ".{name}.objstore-tmp-{random}"
_LOCK = ".lock"                  # local CAS lock files: dojo.storage.locked's ".{name}.lock" beside the key


def _is_ours(name: str) -> bool:
    """Whether a file name is one of this module's (or dojo.storage.locked's) temp or lock files."""
    return _TMP in name or (name.startswith(".") and name.endswith(_LOCK))


# ---------------------------------------------------------------- errors
class StoreError(Exception):
    """Something in the object store cannot be done as asked; the message names the key or URL and what to do."""


class KeyNotFound(StoreError, FileNotFoundError):
    """The key does not exist (also a FileNotFoundError, so callers that handle missing files keep working)."""


class Conflict(StoreError):
    """A conditional write lost: the object changed (or appeared, or vanished) since its version was read."""


class NotCommitted(StoreError):
    """A tree has no commit marker, or its objects do not match it (an upload that did not finish)."""


class CorruptTree(StoreError):
    """A committed tree's content does not match its manifest's sizes or sha256 (changed or damaged)."""


# ---------------------------------------------------------------- keys and URLs
def check_key(key: str, prefix: bool = False) -> str:
    """``key`` if it is a valid relative key (``prefix``: the empty string, the root, is allowed too); else
    ValueError naming it. Refused: absolute, backslashes, NUL, empty / ``.`` / ``..`` segments, and this
    module's temp and lock names."""
    if prefix and key == "":
        return key
    bad = (not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\0" in key
           or any(part in ("", ".", "..") for part in key.split("/"))
           or any(_is_ours(part) for part in key.split("/")))
    if bad:
        raise ValueError(f"{key!r} is not a valid storage key: use a relative '/'-separated path without '..', "
                         f"empty parts, a leading '/' or dojo's temp/lock file names")
    return key


def _valid_key(key) -> bool:
    try:
        check_key(key)
        return True
    except ValueError:
        return False


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def redact(url: str) -> str:
    """``url`` without any user:password part, fit to print."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def default_cache_dir(root_url: str) -> Path:
    """Where trees from ``root_url`` are cached by default: ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/dojo/<first 12 hex of sha256(url)>``, so two roots never share a cache."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dojo" / hashlib.sha256(root_url.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- the interface
class Store(Protocol):
    """What every backend offers. Each method names the key in its errors; a missing key raises KeyNotFound
    (reads) and parents never need creating (writes). Guarantees hold between any processes on any hosts that
    share the root (local: processes on one host or a filesystem with working flock and link)."""

    url: str                    # the root, credentials removed
    cache_dir: Path | None      # where fetch_tree keeps downloaded trees (None: the tree is used in place)

    def url_for(self, key: str) -> str:
        """The key's full URL or path, for messages."""

    def read(self, key: str) -> bytes:
        """The whole object. Local: regular files only. S3: one GET (concurrent ranged GETs above 50 MB)."""

    def open(self, key: str) -> BinaryIO:
        """A binary reader that never mixes two versions. Local: the open file keeps the version it opened.
        S3: later range reads send If-Match with the ETag seen first, so a replaced object fails the read."""

    def size(self, key: str) -> int:
        """The object's size in bytes (KeyNotFound when missing)."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` is an object; a folder (local) or a prefix with objects under it (S3) is not."""

    def list(self, prefix: str = "") -> dict[str, int]:
        """Every object under the folder ``prefix``, recursively, -> its size, sorted. No cache on either
        backend: anything whose write returned before the call is listed (S3 listings are strongly consistent;
        s3fs's dircache is off). Local: temp and lock files, symlinks and specials are left out."""

    def write(self, key: str, data: bytes) -> None:
        """Replace or create the object atomically: readers see the old or the new, never a part. Local: temp
        file + os.replace. S3: one PUT (multipart above 100 MB, which appears only when complete)."""

    def put_file(self, local: Path, key: str) -> None:
        """Upload a local file, atomically as ``write``."""

    def get_file(self, key: str, local: Path) -> None:
        """Download to the local path ``local`` (its folder must exist) through a temp file and a rename."""

    def create(self, key: str, data: bytes) -> bool:
        """Exclusive create: True for exactly one of any number of concurrent callers, False for the others; the
        content is whole when the key appears. Local: complete temp file, os.link to the key. S3: PutObject
        IfNoneMatch='*'. The queue's claims use it."""

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """(content, version) read together, or (None, None) when missing. Version: local sha256 of the content,
        S3 the ETag."""

    def replace_if(self, key: str, data: bytes, version: str | None) -> str:
        """Write only if the object is still at ``version`` (None: only if it does not exist); returns the new
        version, raises Conflict otherwise. Local: under dojo.storage.locked's flock, compare, os.replace.
        S3: PutObject IfMatch=ETag (IfNoneMatch='*' for None)."""

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""

    def copy(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst`` (replaced if it exists); ``dst`` appears whole. S3: server-side CopyObject."""

    def move(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` (replaced if it exists). Local: one rename, atomic. S3: copy then delete, NOT
        atomic (a crash leaves both; two movers can both succeed): commit with ``create`` or a marker instead."""


def open_store(root_url: str | Path, options: dict | None = None, cache_dir: str | Path | None = None) -> Store:
    """The store for ``storage.root``: a local path (or ``file://`` URL) gives a LocalStore; any other URL an
    FsspecStore with ``options`` (``storage.options``) passed to fsspec. ``cache_dir`` (``storage.cache``, which
    dojo.config resolves to the same default) overrides ``default_cache_dir`` for remote roots."""
    text = str(root_url)
    if not is_url(text) or text.startswith("file://"):
        if options:
            raise ValueError(f"storage.options ({', '.join(sorted(options))}) apply only to fsspec URLs such as "
                             f"s3://bucket/prefix; the root {text} is a local folder: remove them")
        return LocalStore(Path(text.removeprefix("file://")))
    return FsspecStore(text, options or {}, cache_dir)


# ---------------------------------------------------------------- local folder
def _copy_into(fin: BinaryIO, dest: Path) -> None:
    """Copy the reader ``fin`` to ``dest`` atomically: a temp file beside it, then os.replace."""
    tmp = dest.with_name(f".{dest.name}{_TMP}{secrets.token_hex(6)}")
    try:
        with open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class LocalStore:
    """A folder on a local (or flock/link-capable network) filesystem. See each method for its guarantee."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        self.cache_dir = None

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def path(self, key: str, prefix: bool = False) -> Path:
        """The local path of ``key``."""
        check_key(key, prefix)
        return self.root / key if key else self.root

    def url_for(self, key: str) -> str:
        return str(self.path(key, prefix=True))

    def _tmp(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}{_TMP}{secrets.token_hex(6)}")

    def read(self, key: str) -> bytes:
        """The whole object (a regular file only: FIFOs and devices are refused, never opened blocking)."""
        with self.open(key) as f:
            return f.read()

    def open(self, key: str) -> BinaryIO:
        """A binary reader on the object; it keeps reading the version it opened even if it is replaced."""
        try:
            return open_regular(self.path(key), "stored object")
        except ValueError as exc:
            if "no such file" in str(exc):
                raise KeyNotFound(f"{self.url_for(key)}: no such object") from None
            raise StoreError(str(exc)) from None

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise KeyNotFound(f"{self.url_for(key)}: no such object") from None

    def exists(self, key: str) -> bool:
        """Whether ``key`` is an object (a regular file); a folder is not."""
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> dict[str, int]:
        """Every object under the folder ``prefix`` (recursively) -> its size, sorted by key. Read from the
        directory each call (no cache), so an object written before the call is always seen. Temp and lock
        files of this module, symlinks and anything but regular files are left out."""
        top = self.path(prefix, prefix=True)
        out = {}
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            for name in files:
                if _is_ours(name):
                    continue
                p = Path(folder) / name
                try:
                    st = p.lstat()
                except FileNotFoundError:       # removed while we walked
                    continue
                if stat.S_ISREG(st.st_mode):
                    out[p.relative_to(self.root).as_posix()] = st.st_size
        return dict(sorted(out.items()))

    def write(self, key: str, data: bytes) -> None:
        """Replace (or create) the object with ``data`` atomically: a temp file beside it, then os.replace.
        Readers see the old content or the new, never a part; a crash leaves at most a hidden temp file."""
        path = self.path(key)
        tmp = self._tmp(path)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def put_file(self, local: Path, key: str) -> None:
        """Copy the local file ``local`` to ``key`` atomically (temp copy beside it, then os.replace)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_regular(local, "file to store") as fin:
            _copy_into(fin, path)

    def get_file(self, key: str, local: Path) -> None:
        """Copy the object to the local path ``local`` (its folder must exist), atomically."""
        with self.open(key) as fin:
            _copy_into(fin, Path(local))

    def create(self, key: str, data: bytes) -> bool:
        """Create the object only if ``key`` does not exist: True for the one caller that created it, False for
        every other. The content is complete when the key appears (a finished temp file is hard-linked to the
        key, and link fails if the key exists; plain O_EXCL would show a half-written file, and leave one behind
        after a crash, that already counts as existing)."""
        path = self.path(key)
        tmp = self._tmp(path)
        try:
            tmp.write_bytes(data)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """(content, version) of the object, or (None, None) when it does not exist. The version is the sha256 of
        the content: equal content is the same version (harmless for state files, whose meaning is their
        content)."""
        try:
            data = self.read(key)
        except KeyNotFound:
            return None, None
        return data, "sha256:" + hashlib.sha256(data).hexdigest()

    def replace_if(self, key: str, data: bytes, version: str | None) -> str:
        """Write ``data`` only if the object is still at ``version`` (None: only if it does not exist); returns
        the new version. Raises Conflict otherwise. Under dojo.storage.locked (a blocking flock on ``.{name}.lock``
        beside the key, held for one compare + rename), the current content is hashed and compared, then replaced
        atomically; every replace_if and update_json on the key, and every ``with storage.locked(path)``
        read-modify-write of it, holds the same lock, so no update is lost between them. A plain ``write`` or
        ``delete`` of the key does not take the lock: change shared state only through these."""
        path = self.path(key)
        with locked(path):
            _, current = self.read_versioned(key)
            if current != version:
                raise _conflict(self.url_for(key), version, current is None)
            self.write(key, data)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error (as on S3)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def copy(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst`` (replaced if it exists), atomically at ``dst``."""
        if not self.exists(src):
            raise KeyNotFound(f"{self.url_for(src)}: no such object to copy to {self.url_for(dst)}")
        self.put_file(self.path(src), dst)

    def move(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` (replaced if it exists) with one rename: atomic here, but NOT on S3 (copy then
        delete), so callers that need one winner commit with ``create`` or a marker, not with move."""
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.path(src), target)
        except FileNotFoundError:
            raise KeyNotFound(f"{self.url_for(src)}: no such object to move to {self.url_for(dst)}") from None


# ---------------------------------------------------------------- fsspec (S3 and others)
def _s3_code(exc: BaseException) -> str | None:
    """The S3 error code behind an s3fs exception (s3fs keeps the botocore ClientError as __cause__)."""
    for e in (exc, exc.__cause__, exc.__context__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code")
    return None


def _conflict(url: str, version: str | None, missing: bool) -> Conflict:
    if version is None:
        return Conflict(f"{url}: already exists (it was created after it was read as missing); read it again "
                        f"and retry")
    if missing:
        return Conflict(f"{url}: was deleted since it was read; read it again and retry")
    return Conflict(f"{url}: changed since it was read (another writer won); read it again and retry")


class FsspecStore:
    """Any fsspec URL; ``s3://`` through s3fs, with conditional writes. Other protocols get everything but
    ``create``/``replace_if`` (and so ``update_json`` and trees' exclusive commit), which raise StoreError: fsspec
    has no portable conditional write."""

    def __init__(self, url: str, options: dict | None = None, cache_dir: str | Path | None = None):
        import fsspec

        options = dict(options or {})
        # No listing cache, ever: s3fs/fsspec keep directory listings (dircache) per instance, which would hide an
        # object another process wrote after our first listing. With use_listings_cache=False the dircache stores
        # nothing; list() also invalidates it before each listing in case a caller's options turned it on.
        options["use_listings_cache"] = False
        # One filesystem object per store: fsspec would otherwise hand every store with equal options the same
        # cached instance, whose client keeps the endpoint and credentials of the first one made in the process.
        options.setdefault("skip_instance_cache", True)
        try:
            self.fs, base = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise StoreError(f"{redact(url)}: cannot open the storage root ({type(exc).__name__}: {exc}); check "
                             f"storage.root and storage.options") from None
        self.base = base.rstrip("/")
        self.url = redact(url.rstrip("/"))
        self.s3 = any(p in ("s3", "s3a") for p in ((self.fs.protocol,) if isinstance(self.fs.protocol, str)
                                                   else self.fs.protocol))
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.url)

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    def _path(self, key: str, prefix: bool = False) -> str:
        check_key(key, prefix)
        return _join(self.base, key)

    def url_for(self, key: str) -> str:
        check_key(key, prefix=True)
        return _join(self.url, key)

    def _fail(self, exc: Exception, key: str, doing: str) -> Exception:
        code = _s3_code(exc)
        if isinstance(exc, FileNotFoundError) and code != "NoSuchBucket":   # a missing bucket is no missing key
            return KeyNotFound(f"{self.url_for(key)}: no such object")
        hint = {"NoSuchBucket": "the bucket does not exist: create it or fix storage.root",
                "AccessDenied": "access denied: check the credentials (AWS_* environment or storage.options) and "
                                "the bucket policy",
                "InvalidAccessKeyId": "the access key is not known to this endpoint: check AWS_ACCESS_KEY_ID and "
                                      "AWS_ENDPOINT_URL",
                "SignatureDoesNotMatch": "the secret key does not match: check AWS_SECRET_ACCESS_KEY"}.get(code)
        if isinstance(exc, PermissionError) and hint is None:
            hint = "permission denied: check the credentials and the bucket policy"
        return StoreError(f"{self.url_for(key)}: cannot {doing} ({hint or f'{type(exc).__name__}: {exc}'})")

    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return self.fs.cat_file(path)
        except (OSError, ValueError) as exc:
            raise self._fail(exc, key, "read it") from None

    def open(self, key: str) -> BinaryIO:
        """A binary reader; on S3 every later range read sends If-Match with the ETag seen at open, so a
        replaced object fails the read instead of mixing two versions."""
        path = self._path(key)
        try:
            return self.fs.open(path, "rb")
        except (OSError, ValueError) as exc:
            raise self._fail(exc, key, "open it") from None

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            info = self.fs.info(path)
        except (OSError, ValueError) as exc:
            raise self._fail(exc, key, "stat it") from None
        if info.get("type") != "file":
            raise KeyNotFound(f"{self.url_for(key)}: no such object (it is a prefix with objects under it)")
        return int(info["size"])

    def exists(self, key: str) -> bool:
        """Whether ``key`` is an object; a prefix with objects under it is not (S3 has no folders)."""
        path = self._path(key)
        try:
            return self.fs.isfile(path)
        except (OSError, ValueError) as exc:
            raise self._fail(exc, key, "check it") from None

    def list(self, prefix: str = "") -> dict[str, int]:
        """Every object under the folder ``prefix`` (recursively) -> its size, sorted by key; one fresh LIST
        (S3 listings are strongly consistent: an object whose PUT returned is listed)."""
        self.fs.invalidate_cache()
        top = self._path(prefix, prefix=True)
        try:
            found = self.fs.find(top, detail=True)
        except FileNotFoundError as exc:
            if _s3_code(exc) == "NoSuchBucket":
                raise self._fail(exc, prefix, "list it") from None
            return {}
        except (OSError, ValueError) as exc:
            raise self._fail(exc, prefix, "list it") from None
        start = len(self.base) + 1 if self.base else 0
        under = f"{top}/" if prefix else (f"{self.base}/" if self.base else "")
        out = {path[start:]: int(info["size"]) for path, info in found.items()
               if info.get("type") == "file" and path.startswith(under)}
        return dict(sorted(out.items()))

    def versions(self, prefix: str = "") -> dict[str, str]:
        """Every object under the folder ``prefix`` -> its ETag (one fresh LIST): what a working copy compares
        to know which objects changed (``dojo.mirror``)."""
        return {k: str(info.get("ETag") or info.get("etag") or info.get("size")) for k, info in self._find(prefix)}

    def modified(self, prefix: str = "") -> dict[str, float]:
        """Every object under the folder ``prefix`` -> when it was last written (epoch seconds; retention's ages)."""
        return {k: info["LastModified"].timestamp() for k, info in self._find(prefix) if info.get("LastModified")}

    def _find(self, prefix: str) -> list[tuple[str, dict]]:
        self.fs.invalidate_cache()
        top = self._path(prefix, prefix=True)
        try:
            found = self.fs.find(top, detail=True)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise self._fail(exc, prefix, "list it") from None
        start = len(self.base) + 1 if self.base else 0
        under = f"{top}/" if prefix else (f"{self.base}/" if self.base else "")
        return sorted((path[start:], info) for path, info in found.items()
                      if info.get("type") == "file" and path.startswith(under))

    def write(self, key: str, data: bytes) -> None:
        """Replace (or create) the object: one PUT (multipart above 100 MB, which also appears only complete)."""
        path = self._path(key)
        try:
            self.fs.pipe_file(path, data)
        except (OSError, ValueError) as exc:
            raise self._fail(exc, key, "write it") from None

    def put_file(self, local: Path, key: str) -> None:
        """Upload the local file; the object appears whole when the (multipart) upload completes."""
        path = self._path(key)
        if not Path(local).is_file():
            raise StoreError(f"{local}: no such local file to upload to {self.url_for(key)}")
        try:
            self.fs.put_file(str(local), path)
        except (OSError, ValueError) as exc:
            raise self._fail(exc, key, f"upload {local} to it") from None

    def get_file(self, key: str, local: Path) -> None:
        """Download the object to ``local`` (its folder must exist) through a temp file and a rename."""
        path, local = self._path(key), Path(local)
        tmp = local.with_name(f".{local.name}{_TMP}{secrets.token_hex(6)}")
        try:
            self.fs.get_file(path, str(tmp))
            os.replace(tmp, local)
        except (OSError, ValueError) as exc:
            raise self._fail(exc, key, f"download it to {local}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _need_s3(self, what: str) -> None:
        if not self.s3:
            raise StoreError(f"{self.url}: {what} needs a conditional write, which dojo does only on s3:// (and "
                             f"local) roots; use one of those for storage.root")

    def _put(self, key: str, data: bytes, condition: dict) -> str:
        bucket, path, _ = self.fs.split_path(self._path(key))
        response = self.fs.call_s3("put_object", Bucket=bucket, Key=path, Body=data, **condition)
        return response["ETag"]

    def create(self, key: str, data: bytes) -> bool:
        """Create the object only if ``key`` does not exist: PutObject with ``IfNoneMatch='*'``, which S3 applies
        atomically. True for the one caller that created it, False for every other. S3 answers 409
        ConditionalRequestConflict while another conditional write to the key is in flight; that is retried."""
        self._need_s3("an exclusive create")
        for attempt in range(8):
            try:
                self._put(key, data, {"IfNoneMatch": "*"})
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                code = _s3_code(exc)
                if code == "PreconditionFailed":
                    return False
                if code != "ConditionalRequestConflict":
                    raise self._fail(exc, key, "create it") from None
                time.sleep(random.uniform(0, 0.05 * 2 ** attempt))
        raise StoreError(f"{self.url_for(key)}: S3 kept answering ConditionalRequestConflict; retry later")

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """(content, ETag) from one GetObject, so the pair is consistent; (None, None) when it does not exist."""
        self._need_s3("a versioned read")
        from fsspec.asyn import sync

        bucket, path, _ = self.fs.split_path(self._path(key))

        async def get():
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=path)
            try:
                return await response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError as exc:
            if _s3_code(exc) == "NoSuchBucket":
                raise self._fail(exc, key, "read it") from None
            return None, None
        except (OSError, ValueError) as exc:
            raise self._fail(exc, key, "read it") from None

    def replace_if(self, key: str, data: bytes, version: str | None) -> str:
        """Write ``data`` only if the object's ETag is still ``version`` (PutObject ``IfMatch``; None: only if it
        does not exist, ``IfNoneMatch='*'``); returns the new ETag. Raises Conflict otherwise (412
        PreconditionFailed, 404 when it was deleted, 409 ConditionalRequestConflict when another conditional
        write raced this one). Any other write of the key changes its ETag, so it, too, makes this fail."""
        self._need_s3("a compare-and-swap")
        try:
            return self._put(key, data, {"IfNoneMatch": "*"} if version is None else {"IfMatch": version})
        except FileExistsError:
            raise _conflict(self.url_for(key), version, False) from None
        except OSError as exc:
            code = _s3_code(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or isinstance(exc, FileNotFoundError):
                raise _conflict(self.url_for(key), version, isinstance(exc, FileNotFoundError)) from None
            raise self._fail(exc, key, "write it") from None

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""
        path = self._path(key)
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise self._fail(exc, key, "delete it") from None

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy (S3 CopyObject); ``dst`` appears whole, replaced if it exists."""
        paths = self._path(src), self._path(dst)
        try:
            self.fs.copy(*paths)
        except (OSError, ValueError) as exc:
            raise self._fail(exc, src, f"copy it to {self.url_for(dst)}") from None

    def move(self, src: str, dst: str) -> None:
        """Copy, then delete ``src``. NOT atomic: a crash in between leaves both, and two movers of one key can
        both succeed. Callers that need one winner (queue claims) use ``create``; trees commit with a marker."""
        self.copy(src, dst)
        self.delete(src)


# ---------------------------------------------------------------- JSON state by compare-and-swap
def parse_json(data: bytes, where: str, expect: type = dict):
    """``data`` parsed as JSON of type ``expect``; StateError naming ``where`` for anything else (same limits as
    dojo.storage.read_json: size, nesting depth, UTF-8, shape)."""
    if len(data) > MAX_STATE_BYTES:
        raise StateError(f"{where}: {len(data)} bytes, more than the {MAX_STATE_BYTES} allowed; move it away")
    try:
        text = data.decode("utf-8")
        if _depth(text) > MAX_JSON_DEPTH:
            raise StateError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep; fix it or move it away")
        value = json.loads(text)
    except UnicodeDecodeError:
        raise StateError(f"{where}: not UTF-8 text; fix it or move it away") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise StateError(f"{where}: not valid JSON ({exc}); fix it or move it away") from None
    if not isinstance(value, expect):
        raise StateError(f"{where}: must be a JSON {expect.__name__}, not {type(value).__name__}; fix it or move "
                         f"it away")
    return value


def dump_json(value) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def get_json(store: Store, key: str, expect: type = dict, default=None):
    """The JSON object stored at ``key`` (``default`` when missing); StateError naming its URL when unusable."""
    try:
        data = store.read(key)
    except KeyNotFound:
        return default
    return parse_json(data, store.url_for(key), expect)


def update_json(store: Store, key: str, fn: Callable, retries: int = 50, default=None, expect: type = dict):
    """Read the JSON at ``key`` (a deep copy of ``default`` when missing), apply ``fn`` to it, and write the result
    only if nobody wrote the key meanwhile; on a Conflict, read again and re-apply ``fn`` (so ``fn`` must be a pure
    function of its argument), with a growing random back-off, up to ``retries`` times. Returns the value written
    (or left unchanged, without writing, when ``fn`` returns what it was given). No update is lost: each
    successful write was computed from the version it replaced. One limit: if a PUT succeeds but its answer is
    lost and the client retries it, the retry fails the condition and ``fn`` is applied once more; keep ``fn``
    idempotent where that matters (set a field, add to a set) rather than counting."""
    for attempt in range(retries + 1):
        data, version = store.read_versioned(key)
        current = copy.deepcopy(default) if data is None else parse_json(data, store.url_for(key), expect)
        before = copy.deepcopy(current)
        new = fn(current)
        if new == before and data is not None:
            return new
        try:
            store.replace_if(key, dump_json(new), version)
            return new
        except Conflict:
            time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** attempt)))
    raise Conflict(f"{store.url_for(key)}: still changing after {retries} retries (many writers at once?); "
                   f"retry later")


# ---------------------------------------------------------------- committed trees
def _local_files(folder: Path) -> dict[str, int]:
    """Relative path -> size of every regular file under ``folder`` (symlinks and specials refused)."""
    out = {}
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            p = Path(top) / name
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{p}: not a regular file; a committed tree holds regular files only")
            out[p.relative_to(folder).as_posix()] = st.st_size
    return dict(sorted(out.items()))


def build_manifest(folder: Path) -> dict:
    """The commit marker for the local folder ``folder``: its own ``.manifest.json`` when it has one (a
    checkpoint's, written by model/checkpoint.py), checked against the files; else one built here of every file.
    Files present but not in the manifest's ``files`` (a checkpoint's ledger, which evaluation updates) travel
    with the tree under ``unhashed``: listed, copied, not verified."""
    folder = Path(folder)
    on_disk = _local_files(folder)
    if MANIFEST in on_disk:
        manifest = parse_json((folder / MANIFEST).read_bytes(), str(folder / MANIFEST))
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise StoreError(f"{folder / MANIFEST}: has no files table; rebuild the checkpoint's manifest")
        for rel, entry in files.items():
            if on_disk.get(rel) != entry.get("size") or sha256_file(folder / rel) != entry.get("sha256"):
                raise StoreError(f"{folder / rel}: does not match {MANIFEST} (missing, changed or truncated); "
                                 f"the folder cannot be committed as it is")
    else:
        files = {rel: {"size": size, "sha256": sha256_file(folder / rel)} for rel, size in on_disk.items()}
        manifest = {"manifest_version": MANIFEST_VERSION, "algorithm": "sha256", "files": files}
    manifest = dict(manifest)
    manifest["unhashed"] = sorted(rel for rel in on_disk if rel not in files and rel != MANIFEST)
    return manifest


def upload_tree(store: Store, local_dir: Path, prefix: str) -> dict:
    """Commit the local folder ``local_dir`` as the tree ``prefix``: every file is written under ``prefix/``
    first, then the marker ``prefix/.manifest.json`` LAST, by exclusive create, so a crash at any point leaves no
    committed tree and two uploaders of one prefix commit at most once. Re-uploading the same content to a
    committed prefix is a no-op (a retried task); other content raises StoreError (committed trees are
    immutable). Returns the manifest."""
    check_key(prefix)
    local_dir = Path(local_dir)
    manifest = build_manifest(local_dir)
    existing = committed(store, prefix)
    if existing is not None:
        if existing.get("files") == manifest["files"]:
            return existing
        raise StoreError(f"{store.url_for(prefix)}: already committed with other content; committed trees are "
                         f"never overwritten: use another name, or delete it first")
    for rel in [*manifest["files"], *manifest["unhashed"]]:
        store.put_file(local_dir / rel, _join(prefix, rel))
    if not store.create(_join(prefix, MANIFEST), dump_json(manifest)):
        theirs = committed(store, prefix)
        if theirs is None or theirs.get("files") != manifest["files"]:
            raise StoreError(f"{store.url_for(prefix)}: another process committed this tree at the same time with "
                             f"other content; use another name")
        return theirs
    return manifest


def _tree_problems(manifest_bytes: bytes | None, listing: dict[str, int], prefix: str, where: str) \
        -> tuple[dict | None, list[str]]:
    if manifest_bytes is None:
        return None, [f"no {MANIFEST} (never committed, or the upload did not finish)"]
    try:
        manifest = parse_json(manifest_bytes, where)
    except StateError as exc:
        return None, [str(exc)]
    files, unhashed = manifest.get("files"), manifest.get("unhashed", [])
    if not (isinstance(files, dict) and all(isinstance(e, dict) and isinstance(e.get("size"), int)
                                            and isinstance(e.get("sha256"), str) for e in files.values())):
        return None, [f"{where}: no valid files table ({{path: {{size, sha256}}}})"]
    if not isinstance(unhashed, list):
        return None, [f"{where}: unhashed must be a list of paths"]
    unsafe = [rel for rel in [*files, *unhashed] if not _valid_key(rel) or rel == MANIFEST]
    if unsafe:          # a hostile marker must not make fetch_tree write outside its folder
        return None, [f"{where}: lists paths that are not plain relative paths: {unsafe[:3]!r}"]
    problems = []
    for rel, entry in sorted(files.items()):
        size = listing.get(_join(prefix, rel))
        if size is None:
            problems.append(f"{rel} is missing (listed in {MANIFEST})")
        elif size != entry["size"]:
            problems.append(f"{rel} is {size} bytes, {MANIFEST} says {entry['size']}")
    return (None if problems else manifest), problems


def committed(store: Store, prefix: str) -> dict | None:
    """The manifest of the tree ``prefix`` if it is committed: the marker exists and every file it lists is
    there with its size (one listing, no hashes). None otherwise."""
    try:
        marker = store.read(_join(check_key(prefix), MANIFEST))
    except KeyNotFound:
        return None
    manifest, _ = _tree_problems(marker, store.list(prefix), prefix, store.url_for(_join(prefix, MANIFEST)))
    return manifest


def list_committed(store: Store, parent: str = "") -> list[str]:
    """The committed trees directly under ``parent`` (their prefixes, sorted), from one listing; uncommitted
    and half-uploaded ones are not there."""
    listing = store.list(parent)
    start = len(parent) + 1 if parent else 0
    names = sorted({k[start:].split("/", 1)[0] for k in listing if k[start:].endswith("/" + MANIFEST)
                    and k[start:].count("/") == 1})
    out = []
    for name in names:
        prefix = _join(parent, name)
        try:
            marker = store.read(_join(prefix, MANIFEST))
        except KeyNotFound:         # deleted since the listing
            continue
        if _tree_problems(marker, listing, prefix, store.url_for(_join(prefix, MANIFEST)))[0] is not None:
            out.append(prefix)
    return out


def _verify_local(folder: Path, manifest: dict, hashes: bool, where: str) -> None:
    bad = []
    for rel, entry in sorted(manifest["files"].items()):
        p = folder / rel
        if not p.is_file():
            bad.append(f"{rel} is missing")
        elif p.stat().st_size != entry["size"]:
            bad.append(f"{rel} is {p.stat().st_size} bytes, {MANIFEST} says {entry['size']}")
        elif hashes and sha256_file(p) != entry["sha256"]:
            bad.append(f"{rel} does not match its sha256 in {MANIFEST}")
    if bad:
        raise CorruptTree(f"{where}: does not match its manifest ({'; '.join(bad[:5])}"
                          f"{' …' if len(bad) > 5 else ''}); it is not used. Delete or re-upload it")


def _same_files(folder: Path, manifest: dict) -> bool:
    """Whether ``folder`` holds a manifest with the same files table (a checkpoint's own manifest, before upload
    added ``unhashed``, counts as the same)."""
    try:
        return parse_json((folder / MANIFEST).read_bytes(), str(folder / MANIFEST)).get("files") == manifest["files"]
    except (OSError, StateError):
        return False


def fetch_tree(store: Store, prefix: str, hashes: bool = True) -> Path:
    """A local folder holding the committed tree ``prefix``, verified against its manifest (sizes, and sha256
    with ``hashes``). Local roots: the tree itself, in place. Remote roots: ``store.cache_dir/prefix``, reused when
    its manifest lists the same files as the remote marker (sizes re-checked: it was verified when it was fetched,
    or it is the folder the tree was uploaded from), else downloaded into a temp folder beside it, verified, and
    renamed into place, so a partial or corrupt download is never used. ``unhashed`` files (a ledger) are copied
    when the tree is downloaded and not refreshed on reuse: read them from the store when their latest content
    matters. Raises NotCommitted
    (no marker, or objects missing / of other sizes) or CorruptTree (a sha256 differs), naming the tree."""
    marker_key = _join(check_key(prefix), MANIFEST)
    try:
        marker = store.read(marker_key)
    except KeyNotFound:
        marker = None
    manifest, problems = _tree_problems(marker, store.list(prefix), prefix, store.url_for(marker_key))
    if manifest is None:
        raise NotCommitted(f"{store.url_for(prefix)}: not a committed tree ({'; '.join(problems[:5])}); readers "
                           f"skip it until an upload finishes")
    if store.cache_dir is None:                      # a local root: use it in place
        folder = store.path(prefix)
        _verify_local(folder, manifest, hashes, store.url_for(prefix))
        return folder
    final = Path(store.cache_dir) / prefix
    if _same_files(final, manifest):                 # already here: fetched before, or written here and uploaded
        _verify_local(final, manifest, False, str(final))
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{_TMP}{secrets.token_hex(6)}")
    try:
        for rel in [*manifest["files"], *manifest.get("unhashed", [])]:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            store.get_file(_join(prefix, rel), tmp / rel)
        (tmp / MANIFEST).write_bytes(marker)
        _verify_local(tmp, manifest, True, store.url_for(prefix))
        if final.exists():                           # a stale copy (another marker), or a concurrent fetch's
            old = final.with_name(f".{final.name}{_TMP}old-{secrets.token_hex(6)}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:                              # another process renamed its verified copy first
            if not _same_files(final, manifest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
