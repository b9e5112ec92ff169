"""The Oracle's API key and the checks made with it.

The key is ``$DOJO_API_KEY`` when set, else the file ``state/serve.key`` under the storage root. On the first
start without either, a random key is written there, mode 0600, and printed once (``dojo up`` or ``dojo serve``
says where it is on later starts, never the key). A key file that others may read (group or other permission
bits) or that is not a regular file is refused, as ssh refuses such a private key; a key shorter than
``MIN_KEY_CHARS`` is refused too.

Binding beyond loopback needs a key that already exists (``$DOJO_API_KEY`` or a key file from an earlier start):
the server never invents a key and opens a public port in the same breath.

Every comparison is constant-time (``hmac.compare_digest``). The page's cookie holds an HMAC of the key, not the
key, so it dies with the key.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

ENV = "DOJO_API_KEY"
KEY_FILE = Path("state") / "serve.key"
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 4096
COOKIE = "dojo_oracle"


@dataclass(frozen=True)
class Key:
    value: str
    source: str             # "$DOJO_API_KEY" or the key file's path
    created: bool = False   # written by this call (print it once)


def key_path(root: Path) -> Path:
    return Path(root) / KEY_FILE


def _checked(value: str, source: str) -> str:
    value = value.strip()
    if not MIN_KEY_CHARS <= len(value) <= MAX_KEY_CHARS or not value.isascii() or not value.isprintable() \
            or any(c.isspace() for c in value):
        raise ValueError(f"{source}: an API key must be {MIN_KEY_CHARS}-{MAX_KEY_CHARS} printable ASCII characters "
                         f"without spaces; set another one")
    return value


def find_key(root: Path, env: dict | None = None) -> Key | None:
    """The configured key, or None when there is none yet. ValueError naming the file for an unusable one."""
    env = os.environ if env is None else env
    if env.get(ENV, "").strip():
        return Key(_checked(env[ENV], f"${ENV}"), f"${ENV}")
    path = key_path(root)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: the API key file is not a regular file; move it away")
    if st.st_mode & 0o077:
        raise ValueError(f"{path}: the API key file is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                         f"run chmod 600 {path}")
    if st.st_uid != os.getuid():
        raise ValueError(f"{path}: the API key file belongs to another user; move it away")
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        return Key(_checked(f.read(MAX_KEY_CHARS + 1), str(path)), str(path))


def ensure_key(root: Path, env: dict | None = None) -> Key:
    """The configured key; without one, a new random key written to the key file (0600, complete or not at all:
    written under a temp name and linked into place, so two starts at once agree on one key)."""
    found = find_key(root, env)
    if found:
        return found
    path = key_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:         # another start won the race: use its key
            created = False
    finally:
        tmp.unlink(missing_ok=True)
    key = find_key(root, env)
    return Key(key.value, key.source, created)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def server_key(root: Path, host: str, env: dict | None = None) -> Key:
    """The key a server bound to ``host`` uses. Beyond loopback it must exist already (see the module doc)."""
    if is_loopback(host):
        return ensure_key(root, env)
    key = find_key(root, env)
    if key is None:
        raise ValueError(f"refusing to bind {host} (beyond loopback) without an API key: set ${ENV}, or start once "
                         f"on 127.0.0.1 to create {key_path(root)}")
    return key


def matches(given: str | None, key: str) -> bool:
    """Constant-time equality of a presented secret and the key (False for none)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), key.encode("utf-8"))


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def basic_password(header: str | None) -> str | None:
    """The password of an ``Authorization: Basic …`` header (any user name)."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def cookie_value(key: str) -> str:
    """What the page's HttpOnly cookie holds: an HMAC of the key (never the key itself)."""
    return hmac.new(key.encode("utf-8"), b"dojo-oracle-page-v1", hashlib.sha256).hexdigest()
