"""Secrets on the server: stored encrypted, readable only by the run that needs them.

**Storage.** One row per secret in the ``secrets`` table (schema version 5): ``name``,
``ciphertext`` (a Fernet token of the UTF-8 value), ``created``, ``updated``. Names and
dates can be listed; a value is only ever decrypted for :func:`secret_value`.

**The key** is never in the database. It comes from ``$FERROFLOW_SECRET_KEY`` (one or
more Fernet keys separated by commas: the first encrypts, every one decrypts), else
from the key file beside the store (:func:`key_file_for`: ``secret.key`` in the
store's folder; for PostgreSQL, in ``$FERROFLOW_HOME``). The key file is created on
first use with mode ``0600`` and refused when anyone but its owner may read or write it
(:class:`~ferroflow.exceptions.SecretKeyError`, which says ``chmod 600``).

**Rotation** (:func:`rotate_key`, ``ferroflow secrets rotate-key``): with a key file, a
new key is put first in the file (the old ones stay after it, so every secret stays
readable at every moment), every secret is re-encrypted with the new key in one
transaction, then the old keys are dropped from the file. With
``$FERROFLOW_SECRET_KEY``, put the new key first (``NEW,OLD``), rotate, then drop the
old one. Decryption uses ``cryptography``'s ``MultiFernet`` over every key.

**Who may read a value** (:func:`check_reader`): only a flow run that an agent holds
right now (``Pending`` or ``Running`` with an agent). Without tokens (open mode) that
is the whole check; with tokens, the caller must also be a ``runner`` token, the one
whose agent claimed the run (the actor of the run's latest ``claim_flow_run`` audit
line). ``user``, ``read_only`` and ``admin`` tokens never get a value.

**What is stored is masked** (:func:`masker`): every log line (``write_run_logs``, an
ingested batch's lines) and state message (``set_flow_run_states``,
``set_task_run_states``, an ingested flow run's) has the value of every stored secret
replaced by ``****`` before it is written, even when a client sends a value it was
given back. The decrypted values are cached per database and refreshed when a secret
is set, removed or re-encrypted (by any process: the cache is keyed on the rows'
ciphertexts, read once per batch).

``cryptography`` is imported only when a secret is encrypted or decrypted.

Example:
    >>> from ferroflow.server.database import open_database  # doctest: +SKIP
    >>> db = open_database("sqlite:///tmp/example/ferroflow.db")  # doctest: +SKIP
    >>> set_secret(db, "TOKEN", "s3cr3t")  # doctest: +SKIP
    >>> [s["name"] for s in list_secrets(db)]  # doctest: +SKIP
    ['TOKEN']
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferroflow.exceptions import ApiError, SecretError, SecretKeyError, SecretNotFoundError
from ferroflow.runtime import MASK
from ferroflow.server import models
from ferroflow.server.database import Database

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

__all__ = [
    "KEY_ENV",
    "KEY_FILE_NAME",
    "MAX_VALUE_BYTES",
    "SecretMask",
    "check_name",
    "check_reader",
    "delete_secret",
    "key_file_for",
    "list_secrets",
    "load_keys",
    "masker",
    "rotate_key",
    "secret_value",
    "set_secret",
]

#: The environment variable that holds the key(s), comma-separated, first one encrypts.
KEY_ENV = "FERROFLOW_SECRET_KEY"

#: The key file's name, in the store's folder.
KEY_FILE_NAME = "secret.key"

#: The largest value a secret may hold, in UTF-8 bytes.
MAX_VALUE_BYTES = 64 * 1024

#: Flow-run states in which the run is held by an agent and may read its secrets.
HELD_STATES = frozenset({"Pending", "Running"})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


def check_name(name: Any) -> str:
    """``name`` if it is a valid secret name (a letter or ``_``, then letters, digits
    and ``_``, at most 200: what an environment variable name may be, so that
    ``FERROFLOW__CONTEXT__SECRETS__<NAME>`` works locally); SecretError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name) if isinstance(name, str) and len(name) <= 200 else "given"
        raise SecretError(
            f"the secret name {shown} is not valid: use 1 to 200 letters, digits and "
            "underscores, not starting with a digit (e.g. DB_PASSWORD)"
        )
    return name


def key_file_for(db: Database) -> Path:
    """Where ``db``'s key file is: beside the SQLite store, or in ``$FERROFLOW_HOME``
    for PostgreSQL."""
    path = getattr(db, "path", None)
    if db.dialect == "sqlite" and path is not None:
        return Path(path).parent / KEY_FILE_NAME
    from ferroflow.store import store_path

    return store_path().parent / KEY_FILE_NAME


def _parse_keys(text: str, where: str) -> list[bytes]:
    from cryptography.fernet import Fernet

    keys = [k.strip() for k in text.replace("\n", ",").split(",") if k.strip()]
    if not keys:
        raise SecretKeyError(f"no secret key in {where}")
    for i, key in enumerate(keys, 1):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            raise SecretKeyError(
                f"key {i} in {where} is not a Fernet key (32 url-safe base64-encoded bytes)"
            ) from None
    return [k.encode() for k in keys]


def _check_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretKeyError(
            f"the secret key file {path} may be read or written by others (mode "
            f"{mode:04o}): run 'chmod 600 {path}'"
        )


def _write_key_file(path: Path, keys: list[bytes], new: bool) -> None:
    """Write ``keys`` (one a line) to ``path`` with mode 0600: created exclusively when
    ``new``, else replaced atomically through a 0600 temporary file."""
    text = b"".join(k + b"\n" for k in keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if new else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not new:
        os.replace(target, path)


def load_keys(key_file: Path, create: bool = True) -> tuple[list[bytes], str]:
    """The Fernet keys (first encrypts) and where they came from (for messages).

    ``$FERROFLOW_SECRET_KEY`` wins; else ``key_file``, created with one new key and mode
    0600 when missing and ``create``.

    Raises:
        SecretKeyError: a key is malformed, the key file's mode lets others read or
            write it, or there is no key and ``create`` is False.
    """
    env = os.environ.get(KEY_ENV, "").strip()
    if env:
        return _parse_keys(env, f"${KEY_ENV}"), f"${KEY_ENV}"
    where = f"the key file {key_file}"
    if not key_file.exists():
        if not create:
            raise SecretKeyError(
                f"no secret key: {key_file} does not exist and ${KEY_ENV} is not set"
            )
        from cryptography.fernet import Fernet

        try:
            _write_key_file(key_file, [Fernet.generate_key()], new=True)
        except FileExistsError:
            pass  # another process made it first: read theirs
        except OSError as exc:
            raise SecretKeyError(f"cannot create the secret key file {key_file}: {exc}") from exc
    try:
        _check_mode(key_file)
        text = key_file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretKeyError(f"cannot read the secret key file {key_file}: {exc}") from exc
    return _parse_keys(text, where), where


def _fernet(keys: list[bytes]) -> MultiFernet:
    from cryptography.fernet import Fernet, MultiFernet

    return MultiFernet([Fernet(k) for k in keys])


def _keys_for(db: Database, create: bool = True) -> tuple[list[bytes], str]:
    return load_keys(key_file_for(db), create=create)


def _decrypt(box: MultiFernet, name: str, token: str, where: str) -> str:
    from cryptography.fernet import InvalidToken

    try:
        return box.decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise SecretKeyError(
            f"secret {name!r} cannot be decrypted with the key from {where}: it was "
            f"encrypted with another key (restore that key, or put it after the new one "
            f"in ${KEY_ENV} or the key file)"
        ) from None


def set_secret(db: Database, name: str, value: str) -> None:
    """Store ``value`` under ``name`` (replacing an earlier value), encrypted.

    Raises:
        SecretError: a bad name, an empty, non-text or oversized value.
        SecretKeyError: the key is unusable.
    """
    check_name(name)
    if not isinstance(value, str) or not value:
        raise SecretError(f"the value of secret {name!r} must be non-empty text")
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise SecretError(f"the value of secret {name!r} is larger than {MAX_VALUE_BYTES} bytes")
    keys, _ = _keys_for(db)
    token = _fernet(keys).encrypt(value.encode("utf-8")).decode("ascii")
    now = time.time()
    with db.transaction():
        changed = db.execute(
            "UPDATE secrets SET ciphertext = ?, updated = ? WHERE name = ?", (token, now, name)
        )
        if not changed:
            db.execute(
                "INSERT INTO secrets(name, ciphertext, created, updated) VALUES (?, ?, ?, ?)",
                (name, token, now, now),
            )
        models.audit(db, "set_secret", name)


def list_secrets(db: Database, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
    """Every secret's ``name``, ``created`` and ``updated``, by name (never a value)."""
    if limit < 0 or limit > models.MAX_PAGE or offset < 0:
        raise ApiError(f"limit must be between 0 and {models.MAX_PAGE}, offset not negative")
    return db.fetchall(
        "SELECT name, created, updated FROM secrets ORDER BY name LIMIT ? OFFSET ?",
        (limit, offset),
    )


def delete_secret(db: Database, name: str) -> None:
    """Remove secret ``name``. SecretNotFoundError when there is none."""
    check_name(name)
    with db.transaction():
        if not db.execute("DELETE FROM secrets WHERE name = ?", (name,)):
            raise SecretNotFoundError(f"no secret named {name!r} (see 'ferroflow secrets ls')")
        models.audit(db, "delete_secret", name)


def read_secret(db: Database, name: str) -> str:
    """The decrypted value of ``name``, with no check of who asks (the CLI's own use
    against the store, and :func:`secret_value` after :func:`check_reader`).

    Raises:
        SecretNotFoundError: no such secret.
        SecretKeyError: the key cannot decrypt it.
    """
    check_name(name)
    row = db.fetchone("SELECT ciphertext FROM secrets WHERE name = ?", (name,))
    if row is None:
        raise SecretNotFoundError(f"no secret named {name!r} (set it: 'ferroflow secrets set')")
    keys, where = _keys_for(db, create=False)
    return _decrypt(_fernet(keys), name, str(row["ciphertext"]), where)


def check_reader(db: Database, run: dict[str, Any], principal: Any) -> None:
    """Raise ApiError unless the caller may read the secrets of flow run ``run``.

    The run must be held by an agent now (``Pending`` or ``Running`` with an agent).
    ``principal`` is None without tokens (that is then the whole check); otherwise it
    must be a ``runner`` token that registered the agent holding the run
    (:func:`ferroflow.server.auth.require_run`; ForbiddenError otherwise).
    """
    from ferroflow.exceptions import ForbiddenError
    from ferroflow.server import auth

    if run["state"] not in HELD_STATES or not run.get("agent_id"):
        raise ApiError(
            f"flow run {run['id']} is {run['state']} and not held by an agent: only a run "
            "that an agent is running may read secret values"
        )
    if principal is None:
        return
    role = getattr(principal, "role", None)
    if role != "runner":
        raise ForbiddenError(
            f"forbidden: a {role or 'token without a'} role may not read secret values: only "
            "the runner token whose agent holds the run may"
        )
    auth.require_run(db, principal, run["id"])


def secret_value(db: Database, flow_run_id: str, name: str, principal: Any = None) -> str:
    """The value of secret ``name`` for flow run ``flow_run_id``, after
    :func:`check_reader`; the read is written to the audit log (never the value).

    Raises:
        ApiError: an unknown run, or one the caller may not read secrets for.
        SecretNotFoundError: no such secret.
        SecretKeyError: the key cannot decrypt it.
    """
    check_name(name)
    run = models.get_flow_run(db, flow_run_id)
    check_reader(db, run, principal)
    value = read_secret(db, name)
    with db.transaction():
        models.audit(db, "read_secret", name, {"flow_run_id": run["id"]})
    return value


def rotate_key(db: Database) -> tuple[int, str]:
    """Re-encrypt every secret with a new key; how many, and where the key is.

    With a key file: a new key goes first in the file (the old ones after it), every
    secret is re-encrypted with it in one transaction, then the file keeps only the
    new key; at every moment each secret is readable with the file's keys. With
    ``$FERROFLOW_SECRET_KEY``: every secret is re-encrypted with its first key (put the
    new key first, ``NEW,OLD``, rotate, then drop the old one).

    Raises:
        SecretKeyError: the key is unusable, or a secret does not decrypt with any key
            (nothing is changed then).
    """
    from cryptography.fernet import Fernet

    key_file = key_file_for(db)
    keys, where = load_keys(key_file, create=True)
    from_env = where.startswith("$")
    if not from_env:
        keys = [Fernet.generate_key(), *keys]
        _write_key_file(key_file, keys, new=False)
    try:
        count = _reencrypt(db, _fernet(keys), where)
    except BaseException:
        if not from_env:
            _write_key_file(key_file, keys[1:], new=False)  # as it was
        raise
    if not from_env:
        _write_key_file(key_file, keys[:1], new=False)
    return count, where


def _reencrypt(db: Database, box: MultiFernet, where: str) -> int:
    from cryptography.fernet import InvalidToken

    with db.transaction():
        rows = db.fetchall("SELECT name, ciphertext FROM secrets ORDER BY name")
        for row in rows:
            try:
                token = box.rotate(str(row["ciphertext"]).encode("ascii")).decode("ascii")
            except InvalidToken:
                raise SecretKeyError(
                    f"secret {row['name']!r} does not decrypt with any key from {where}: "
                    "nothing was rotated (restore the key it was encrypted with)"
                ) from None
            db.execute("UPDATE secrets SET ciphertext = ? WHERE name = ?", (token, row["name"]))
        models.audit(db, "rotate_secret_key", None, {"secrets": len(rows)})
    return len(rows)


# --- masking what the server stores ---------------------------------------------------

#: Per database: the ``(name, ciphertext)`` rows the cached mask was decrypted from,
#: and the mask (None when no value decrypts).
_MASKERS: weakref.WeakKeyDictionary[
    Database, tuple[tuple[tuple[str, str], ...], SecretMask | None]
] = weakref.WeakKeyDictionary()
_MASKERS_LOCK = threading.Lock()


def _forms(value: str) -> set[str]:
    """``value`` as text may show it: itself, and escaped as ``repr`` would print it
    (what :func:`ferroflow.runtime.mask_secret` masks)."""
    forms = {value, repr(value)[1:-1], value.encode("unicode_escape").decode("ascii")}
    return {f for f in forms if f}


def _decrypt_all(db: Database, rows: tuple[tuple[str, str], ...]) -> SecretMask | None:
    """The mask of every value in ``rows`` that decrypts (one that does not cannot be
    masked, and is not a reason to refuse what is written)."""
    try:
        keys, where = _keys_for(db, create=False)
    except SecretKeyError:
        return None
    box = _fernet(keys)
    forms: set[str] = set()
    for name, token in rows:
        try:
            forms |= _forms(_decrypt(box, name, token, where))
        except SecretKeyError:
            continue
    if not forms:
        return None
    return SecretMask(tuple(sorted(forms, key=lambda f: (-len(f), f))))


class SecretMask:
    """Replaces secret values (and their escaped forms, ``forms``, longest first) by
    ``****`` in texts and journal blobs; what :func:`masker` gives."""

    __slots__ = ("encoded", "forms")

    def __init__(self, forms: tuple[str, ...]) -> None:
        self.forms = forms
        self.encoded = tuple(f.encode("utf-8") for f in forms)

    def __call__(self, text: str) -> str:
        """``text`` masked."""
        for form in self.forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def batch(self, texts: list[str]) -> list[str]:
        """``texts`` masked: one search over them all when none holds a value."""
        joined = "\x00".join(texts)
        if not any(form in joined for form in self.forms):
            return texts
        return [self(t) for t in texts]

    def blob(self, data: bytes) -> bytes:
        """A journal blob with the values masked in its transition messages (a blob
        that holds none, or that does not decode, as it is)."""
        if not any(e in data for e in self.encoded):
            return data
        from ferroflow import _native
        from ferroflow.exceptions import StoreError

        try:
            masked = _native.journal_mask(data, list(self.forms))
        except StoreError:
            return data  # not a journal blob the server can read: nothing to mask in it
        return data if masked is None else masked


def masker(db: Database) -> SecretMask | None:
    """What replaces the value of every secret stored in ``db`` by ``****`` (in a log
    line, a state message, a journal blob), or None when no secret is stored.

    Costs one read of the ``secrets`` table (names and ciphertexts); values are
    decrypted again only when a row changed since the last call.

    Example:
        >>> mask = masker(db)  # doctest: +SKIP
        >>> mask("connecting with s3cr3t") if mask else "no secrets"  # doctest: +SKIP
        'connecting with ****'
    """
    rows = tuple(
        (str(r["name"]), str(r["ciphertext"]))
        for r in db.fetchall("SELECT name, ciphertext FROM secrets ORDER BY name")
    )
    if not rows:
        return None
    with _MASKERS_LOCK:
        cached = _MASKERS.get(db)
    if cached is None or cached[0] != rows:
        cached = (rows, _decrypt_all(db, rows))
        with _MASKERS_LOCK:
            _MASKERS[db] = cached
    return cached[1]
