"""Results: where and how a task's value is checkpointed.

A :class:`Result` pairs a *location template* (``"{task_name}/{map_index}.bin"``) with a
:class:`Serializer`. :class:`LocalResult` stores values as files under one directory,
``$FERROFLOW_HOME/results`` unless told otherwise::

    LocalResult(dir=None, location=None, serializer=PickleSerializer())

Every checkpoint is *framed*: a one-line header names the file format version, the
serializer and the Python version (``major.minor``) that wrote it, so reading it back with
another serializer (or a pickle from another Python) fails with a :class:`ResultError`
naming both sides instead of a baffling unpickling error::

    ferroflow 1 value pickle 3.11\\n<payload>

Many small values (the children of a large map) need not mean many small files: a
:class:`PackWriter` appends them all to ONE *pack* file and hands back locations of the
form ``"<pack>#<offset>:<length>"``, which :meth:`LocalResult.read` understands::

    ferroflow 1 pack pickle 3.11\\n<len><payload><len><payload>...

Example:
    >>> import tempfile
    >>> from ferroflow.results import JSONSerializer, LocalResult
    >>> r = LocalResult(dir=tempfile.mkdtemp(), location="{task_name}/{map_index}.json",
    ...                 serializer=JSONSerializer())
    >>> written = r.write({"n": 1}, task_name="load", map_index=0)
    >>> written.location
    'load/0.json'
    >>> r.read(written.location).value
    {'n': 1}
    >>> with r.pack_writer("runs/1/load.pack") as pack:
    ...     locations = [pack.append(i) for i in range(3)]
    >>> locations[1]
    'runs/1/load.pack#36:1'
    >>> r.read_many(locations)
    [0, 1, 2]

Confinement: a rendered location must stay inside the result directory. An absolute path,
a ``..`` that climbs out, or a symlink that resolves outside raises :class:`ResultError`.
"""

from __future__ import annotations

import os
import re
import string
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, ClassVar, TypeVar

from ferroflow.exceptions import ResultError

__all__ = [
    "FORMAT_VERSION",
    "JSONSerializer",
    "LocalResult",
    "MsgpackSerializer",
    "PackWriter",
    "PickleSerializer",
    "Result",
    "Serializer",
    "decode_checkpoint",
    "encode_checkpoint",
    "render_location",
    "template_keys",
]

#: The version of the checkpoint file format this module writes (and the newest it reads).
FORMAT_VERSION = 1

_MAGIC = b"ferroflow"
_MAX_HEADER = 256
_KIND_VALUE = "value"
_KIND_PACK = "pack"
_PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:+-]+$")
_MAX_RECORD = 2**32 - 1
_R = TypeVar("_R", bound="Result")


# --------------------------------------------------------------------------- serializers


class Serializer:
    """Turns a value into bytes and back.

    Subclasses set ``name`` (recorded in every checkpoint's header, so it must be a short
    token without spaces) and implement :meth:`serialize` / :meth:`deserialize`.

    Attributes:
        name: the serializer's name in checkpoint headers (``"pickle"``, ``"json"``...).
        python_version_sensitive: whether bytes written on one Python ``major.minor`` may be
            unreadable on another. If true, reading a checkpoint written by another Python
            is refused with a :class:`ResultError`; if false only the serializer must match.

    Example:
        >>> class Utf8Serializer(Serializer):
        ...     name = "utf8"
        ...     def serialize(self, value):
        ...         return value.encode("utf-8")
        ...     def deserialize(self, data):
        ...         return data.decode("utf-8")
        >>> Utf8Serializer().deserialize(Utf8Serializer().serialize("hé"))
        'hé'
    """

    name: ClassVar[str] = "base"
    python_version_sensitive: ClassVar[bool] = False

    def serialize(self, value: Any) -> bytes:
        """Return ``value`` as bytes.

        Example:
            >>> JSONSerializer().serialize([1, 2])
            b'[1, 2]'
        """
        raise NotImplementedError(f"{type(self).__name__}.serialize")

    def deserialize(self, data: bytes) -> Any:
        """Return the value that :meth:`serialize` turned into ``data``.

        Example:
            >>> JSONSerializer().deserialize(b'[1, 2]')
            [1, 2]
        """
        raise NotImplementedError(f"{type(self).__name__}.deserialize")

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_PLAIN_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})
_PLAIN_CONTAINERS = frozenset({list, tuple, dict, set, frozenset})
_stdlib_dumps: Callable[[Any, int], bytes] | None = None


def _is_plain(value: Any, budget: list[int]) -> bool:
    """Whether ``value`` is built only of builtin scalars and containers (bounded walk)."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return True
    if kind not in _PLAIN_CONTAINERS:
        return False
    if kind is dict:
        return all(_is_plain(k, budget) and _is_plain(v, budget) for k, v in value.items())
    return all(_is_plain(item, budget) for item in value)


class PickleSerializer(Serializer):
    """Pickles values with cloudpickle (functions, lambdas and local classes included).

    Values built only of builtin scalars and small builtin containers take a fast path
    through the standard :mod:`pickle` (the bytes are the same as cloudpickle's). Pickles
    are tied to the Python that wrote them, so a checkpoint written on another Python
    ``major.minor`` is refused when read.

    Example:
        >>> s = PickleSerializer()
        >>> s.deserialize(s.serialize(lambda x: x + 1))(41)
        42
    """

    name: ClassVar[str] = "pickle"
    python_version_sensitive: ClassVar[bool] = True

    def serialize(self, value: Any) -> bytes:
        """Pickle ``value`` (protocol 5).

        Example:
            >>> PickleSerializer().deserialize(PickleSerializer().serialize({1, 2}))
            {1, 2}
        """
        if type(value) in _PLAIN_SCALARS or _is_plain(value, [256]):
            global _stdlib_dumps
            if _stdlib_dumps is None:
                from pickle import dumps

                _stdlib_dumps = dumps
            return _stdlib_dumps(value, 5)
        import cloudpickle  # type: ignore[import-untyped]

        data: bytes = cloudpickle.dumps(value, protocol=5)
        return data

    def deserialize(self, data: bytes) -> Any:
        """Unpickle ``data``.

        Example:
            >>> PickleSerializer().deserialize(PickleSerializer().serialize((1, "a")))
            (1, 'a')
        """
        import pickle

        return pickle.loads(data)


class JSONSerializer(Serializer):
    """Stores values as UTF-8 JSON (stdlib :mod:`json`).

    Only JSON values travel: a tuple comes back as a list, dict keys as strings.

    Args:
        **dumps_kwargs: extra keyword arguments for :func:`json.dumps` (e.g.
            ``default=str``, ``sort_keys=True``).

    Example:
        >>> s = JSONSerializer()
        >>> s.serialize({"a": [1, 2.5, None]})
        b'{"a": [1, 2.5, null]}'
        >>> s.deserialize(b'{"a": 1}')
        {'a': 1}
    """

    name: ClassVar[str] = "json"

    def __init__(self, **dumps_kwargs: Any) -> None:
        self.dumps_kwargs = dumps_kwargs

    def serialize(self, value: Any) -> bytes:
        """Dump ``value`` as JSON, UTF-8 encoded.

        Example:
            >>> JSONSerializer().serialize("é")
            b'"\\\\u00e9"'
        """
        import json

        return json.dumps(value, **self.dumps_kwargs).encode("utf-8")

    def deserialize(self, data: bytes) -> Any:
        """Load JSON from UTF-8 ``data``.

        Example:
            >>> JSONSerializer().deserialize(b'[true, false]')
            [True, False]
        """
        import json

        return json.loads(data.decode("utf-8"))


class MsgpackSerializer(Serializer):
    """Stores values as MessagePack (``msgpack``, imported on first use).

    Compact and fast for plain data; like JSON, a tuple comes back as a list. ``bytes``
    round-trip as ``bytes`` and ``str`` as ``str``; non-string map keys are allowed.

    Example:
        >>> s = MsgpackSerializer()
        >>> s.deserialize(s.serialize({"a": b"raw", 1: [1.5, None]}))
        {'a': b'raw', 1: [1.5, None]}
    """

    name: ClassVar[str] = "msgpack"

    def serialize(self, value: Any) -> bytes:
        """Pack ``value``.

        Example:
            >>> MsgpackSerializer().serialize([1, 2])
            b'\\x92\\x01\\x02'
        """
        import msgpack  # type: ignore[import-untyped]

        data: bytes = msgpack.packb(value, use_bin_type=True)
        return data

    def deserialize(self, data: bytes) -> Any:
        """Unpack ``data``.

        Example:
            >>> MsgpackSerializer().deserialize(b'\\x92\\x01\\x02')
            [1, 2]
        """
        import msgpack

        return msgpack.unpackb(data, raw=False, strict_map_key=False)


# ------------------------------------------------------------------------ framed format


def _header(kind: str, serializer: Serializer) -> bytes:
    name = serializer.name
    if not _NAME_RE.match(name):
        raise ResultError(
            f"serializer name {name!r} cannot go in a checkpoint header: use letters, digits "
            "and _ . : + - only"
        )
    return f"ferroflow {FORMAT_VERSION} {kind} {name} {_PY}\n".encode("ascii")


def _parse_header(head: bytes, location: str) -> tuple[str, str, str, int]:
    """Return ``(kind, serializer name, python version, header length)`` of a checkpoint."""
    end = head.find(b"\n", 0, _MAX_HEADER)
    if not head.startswith(_MAGIC + b" ") or end < 0:
        raise ResultError(
            f"checkpoint {location!r} is not a ferroflow checkpoint (no ferroflow header); "
            "was it written by something else?"
        )
    fields = head[:end].decode("ascii", "replace").split(" ")
    try:
        version = int(fields[1])
    except (IndexError, ValueError):
        raise ResultError(f"checkpoint {location!r} has a corrupt header") from None
    if version > FORMAT_VERSION:
        raise ResultError(
            f"checkpoint {location!r} uses checkpoint format {version}, newer than this "
            f"ferroflow reads ({FORMAT_VERSION}); upgrade ferroflow to read it"
        )
    if len(fields) < 5:
        raise ResultError(f"checkpoint {location!r} has a corrupt header")
    return fields[2], fields[3], fields[4], end + 1


def _check_compatible(name: str, python: str, serializer: Serializer, location: str) -> None:
    if name != serializer.name or (serializer.python_version_sensitive and python != _PY):
        raise ResultError(
            f"checkpoint {location!r} was written with serializer {name!r} on Python {python}; "
            f"this task reads it with {serializer.name!r} on Python {_PY}"
        )


def _serialize(serializer: Serializer, value: Any) -> bytes:
    try:
        data = serializer.serialize(value)
    except Exception as err:
        raise ResultError(
            f"cannot serialize a value of type {type(value).__qualname__} with "
            f"{serializer.name!r}: {type(err).__name__}: {err}"
        ) from err
    if type(data) is bytes:
        return data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ResultError(
            f"serializer {serializer.name!r} returned {type(data).__name__}, not bytes"
        )
    return bytes(data)


def _deserialize_error(serializer: Serializer, location: str, err: Exception) -> ResultError:
    return ResultError(
        f"cannot deserialize checkpoint {location!r} with {serializer.name!r}: "
        f"{type(err).__name__}: {err}"
    )


def _deserialize(serializer: Serializer, data: bytes, location: str) -> Any:
    try:
        return serializer.deserialize(data)
    except Exception as err:
        raise _deserialize_error(serializer, location, err) from err


def encode_checkpoint(value: Any, serializer: Serializer) -> bytes:
    """Serialize ``value`` and frame it with a checkpoint header.

    Args:
        value: the value to store.
        serializer: how to turn it into bytes.

    Returns:
        The bytes of a single-value checkpoint file.

    Raises:
        ResultError: the serializer cannot handle the value.

    Example:
        >>> encode_checkpoint([1], JSONSerializer())  # doctest: +ELLIPSIS
        b'ferroflow 1 value json ...\\n[1]'
    """
    return _header(_KIND_VALUE, serializer) + _serialize(serializer, value)


def decode_checkpoint(data: bytes, serializer: Serializer, location: str = "<bytes>") -> Any:
    """Check the header of a single-value checkpoint and deserialize its payload.

    Args:
        data: the whole checkpoint, as written by :func:`encode_checkpoint`.
        serializer: the serializer the reader expects.
        location: named in error messages.

    Raises:
        ResultError: no/corrupt header, a newer format, a pack file, another serializer
            (or, for pickles, another Python), or a payload that does not deserialize.

    Example:
        >>> decode_checkpoint(encode_checkpoint([1], JSONSerializer()), JSONSerializer())
        [1]
    """
    kind, name, python, start = _parse_header(data[:_MAX_HEADER], location)
    if kind != _KIND_VALUE:
        raise ResultError(
            f"checkpoint {location!r} is a {kind!r} file; read one of its records with a "
            f"location like '{location}#<offset>:<length>'"
        )
    _check_compatible(name, python, serializer, location)
    return _deserialize(serializer, data[start:], location)


# ---------------------------------------------------------------------- location template


class _Keys(dict[str, Any]):
    """The keys a template may use; a missing one raises a ResultError naming it."""

    template: str = ""

    def __missing__(self, key: str) -> Any:
        available = ", ".join(sorted(self)) or "none"
        raise ResultError(
            f"location template {self.template!r} uses unknown key {key!r}; "
            f"available keys: {available}"
        )


def render_location(template: str, **kwargs: Any) -> str:
    """Render a location template with :meth:`str.format_map`.

    Args:
        template: e.g. ``"{task_name}/{map_index}.bin"``; format specs and attribute or
            index lookups work (``"{today:%Y}/{params[n]}"``).
        **kwargs: the values the template may use (parameters, context, inputs).

    Raises:
        ResultError: the template uses a key that is not in ``kwargs`` (the message names
            it and lists the available keys), or is malformed.

    Example:
        >>> render_location("{task_name}/{map_index:03d}.bin", task_name="t", map_index=7)
        't/007.bin'
        >>> render_location("{nope}.bin", task_name="t")
        Traceback (most recent call last):
        ...
        ferroflow.exceptions.ResultError: location template '{nope}.bin' uses unknown key 'nope'; available keys: task_name
    """  # noqa: E501
    keys = _Keys(kwargs)
    keys.template = template
    try:
        return template.format_map(keys)
    except ResultError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise ResultError(
            f"cannot render location template {template!r}: {type(err).__name__}: {err}"
        ) from err


# -------------------------------------------------------------------------------- Result


class Result:
    """Base class: a value, where it is stored, and how it is serialized.

    Subclasses implement :meth:`exists`, :meth:`read` and :meth:`write`; this class gives
    template rendering (:meth:`format`) and :meth:`copy`.

    Args:
        location: a location template such as ``"{task_name}/{map_index}.bin"``, rendered
            with the keyword arguments of :meth:`write`. ``None`` means a fresh unique name
            for every write.
        serializer: how values become bytes; default :class:`PickleSerializer`.

    Attributes:
        value: the value read or written (``None`` on a template result).
        location: the template, or on a result returned by ``read``/``write`` the rendered
            location the value lives at.
        serializer: the serializer.

    Example:
        >>> r = Result(location="{flow_name}/{task_name}.bin")
        >>> r.format(flow_name="etl", task_name="load")
        'etl/load.bin'
        >>> r.serializer
        PickleSerializer()
    """

    def __init__(self, location: str | None = None, serializer: Serializer | None = None) -> None:
        self.value: Any = None
        self.location = location
        self.serializer: Serializer = PickleSerializer() if serializer is None else serializer

    def format(self, **kwargs: Any) -> str:
        """Render :attr:`location` with ``kwargs`` (see :func:`render_location`).

        With no location template, returns a fresh unique name (``"<32 hex digits>.result"``).

        Raises:
            ResultError: an unknown template key (named, with the available keys listed) or
                a malformed template.

        Example:
            >>> Result(location="{a}-{b}.bin").format(a=1, b="x")
            '1-x.bin'
        """
        if self.location is None:
            return f"{os.urandom(16).hex()}.result"
        return render_location(self.location, **kwargs)

    def copy(self: _R) -> _R:
        """Return a shallow copy (same serializer instance).

        Example:
            >>> r = Result(location="a.bin")
            >>> c = r.copy()
            >>> c.location = "b.bin"
            >>> r.location, c.location
            ('a.bin', 'b.bin')
        """
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def exists(self, location: str, **kwargs: Any) -> bool:
        """Whether a value is stored at ``location`` (rendered with ``kwargs`` if given).

        Example:
            >>> import tempfile
            >>> LocalResult(dir=tempfile.mkdtemp()).exists("nothing.bin")
            False
        """
        raise NotImplementedError(f"{type(self).__name__}.exists")

    def read(self: _R, location: str) -> _R:
        """Read the value stored at ``location``; return a copy with ``value`` and
        ``location`` set.

        Example:
            >>> import tempfile
            >>> r = LocalResult(dir=tempfile.mkdtemp(), location="x.bin")
            >>> r.read(r.write(5).location).value
            5
        """
        raise NotImplementedError(f"{type(self).__name__}.read")

    def write(self: _R, value: Any, **kwargs: Any) -> _R:
        """Store ``value`` at :attr:`location` rendered with ``kwargs``; return a copy with
        ``value`` and the rendered ``location`` set.

        Example:
            >>> import tempfile
            >>> LocalResult(dir=tempfile.mkdtemp(), location="{n}.bin").write(1, n=3).location
            '3.bin'
        """
        raise NotImplementedError(f"{type(self).__name__}.write")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(location={self.location!r}, serializer={self.serializer!r})"


def _default_dir() -> Path:
    home = os.environ.get("FERROFLOW_HOME") or os.path.join("~", ".ferroflow")
    return Path(home).expanduser() / "results"


def _os_error(action: str, path: str | os.PathLike[str], err: OSError) -> ResultError:
    reason = err.strerror or str(err)
    return ResultError(f"cannot {action} {os.fspath(path)!r}: {reason} [errno {err.errno}]")


class LocalResult(Result):
    """Stores values as files under one directory.

    Args:
        dir: the result directory. Default ``$FERROFLOW_HOME/results`` (``FERROFLOW_HOME``
            defaults to ``~/.ferroflow``), looked up each time it is used, so a result built
            at import time follows a later change of ``FERROFLOW_HOME``.
        location: a location template relative to ``dir`` (see :class:`Result`).
        serializer: default :class:`PickleSerializer`.
        validate_dir: create ``dir`` now and raise a :class:`ResultError` if it cannot be
            created (otherwise this happens on the first write).

    Locations are relative to ``dir`` and must stay inside it: an absolute location, one
    whose ``..`` climbs out, or one that passes through a symlink resolving outside raises
    :class:`ResultError`. Writes are atomic (a temporary file in the target's directory,
    then :func:`os.replace`), so a reader never sees half a checkpoint; they are not
    fsync'ed (a process crash cannot tear them, a power loss might lose the last ones).
    Confinement guards against templates that render somewhere unexpected; it is checked
    when a path is used, not a defence against someone changing the directory meanwhile.

    A location ``"<file>#<offset>:<length>"`` names one record of a pack file written by
    :meth:`pack_writer`.

    Example:
        >>> import tempfile
        >>> r = LocalResult(dir=tempfile.mkdtemp(), location="{task_name}/{map_index}.bin")
        >>> w = r.write([1, 2], task_name="t", map_index=0)
        >>> w.location, r.exists("t/0.bin"), r.read("t/0.bin").value
        ('t/0.bin', True, [1, 2])
        >>> r.write(1, task_name="../../etc", map_index=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ferroflow.exceptions.ResultError: location '../../etc/0.bin' escapes the result directory...
    """

    def __init__(
        self,
        dir: str | os.PathLike[str] | None = None,
        location: str | None = None,
        serializer: Serializer | None = None,
        validate_dir: bool = True,
    ) -> None:
        super().__init__(location=location, serializer=serializer)
        self._dir: Path | None = (
            None if dir is None else Path(os.path.abspath(os.path.expanduser(os.fspath(dir))))
        )
        if validate_dir:
            self._ensure_dir(self.dir)

    @property
    def dir(self) -> Path:
        """The result directory (absolute).

        Example:
            >>> LocalResult(dir="/tmp/somewhere", validate_dir=False).dir
            PosixPath('/tmp/somewhere')
        """
        return _default_dir() if self._dir is None else self._dir

    def __repr__(self) -> str:
        return (
            f"LocalResult(dir={os.fspath(self.dir)!r}, location={self.location!r}, "
            f"serializer={self.serializer!r})"
        )

    # -- paths -------------------------------------------------------------------------

    @staticmethod
    def _ensure_dir(path: Path) -> None:
        _make_dirs(path, "result directory")

    def path_of(self, location: str) -> Path:
        """Return the file a location names, checking it stays inside :attr:`dir`.

        A pack location's ``#offset:length`` suffix is dropped.

        Raises:
            ResultError: the location is empty, absolute, climbs out with ``..``, resolves
                outside through a symlink, or names the directory itself.

        Example:
            >>> LocalResult(dir="/data/results", validate_dir=False).path_of("a/b.bin")
            PosixPath('/data/results/a/b.bin')
            >>> LocalResult(dir="/data/results", validate_dir=False).path_of("/etc/passwd")
            ... # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ferroflow.exceptions.ResultError: location '/etc/passwd' is an absolute path;...
        """
        path, _ = _split_slice(location)
        return self._confined(path, location)

    def _confined(self, rel: str, location: str) -> Path:
        base = self.dir
        suffix = (
            f"; result locations must be relative paths inside the result directory "
            f"{os.fspath(base)!r}"
        )
        if not rel or "\x00" in rel:
            raise ResultError(f"location {location!r} is not a valid file name{suffix}")
        if os.path.isabs(rel) or Path(rel).drive:
            raise ResultError(f"location {location!r} is an absolute path{suffix}")
        if rel.startswith("~"):
            raise ResultError(
                f"location {location!r} looks like a home-relative path ('~' is not "
                f"expanded in locations){suffix}"
            )
        full = os.path.normpath(os.path.join(base, rel))
        if not _inside(full, os.fspath(base)):
            raise ResultError(f"location {location!r} escapes the result directory{suffix}")
        real_base = os.path.realpath(base)
        real = os.path.realpath(full)
        if not _inside(real, real_base):
            raise ResultError(
                f"location {location!r} resolves to {real!r} through a symlink, outside the "
                f"result directory{suffix}"
            )
        return Path(full)

    # -- single values -----------------------------------------------------------------

    def exists(self, location: str, **kwargs: Any) -> bool:
        """Whether a checkpoint is stored at ``location``.

        Args:
            location: a location relative to :attr:`dir` (a template if ``kwargs`` are
                given); a pack location is checked to lie within the pack file.
            **kwargs: values to render ``location`` with, as a target template.

        Raises:
            ResultError: the location is not confined to :attr:`dir` or a template key is
                unknown.

        Example:
            >>> import tempfile
            >>> r = LocalResult(dir=tempfile.mkdtemp())
            >>> r.exists("{name}.bin", name="x")
            False
        """
        if kwargs:
            location = render_location(location, **kwargs)
        rel, span = _split_slice(location)
        path = self._confined(rel, location)
        try:
            size = os.stat(path).st_size
        except OSError:
            return False
        if span is None:
            return path.is_file()
        offset, length = span
        return offset + length <= size

    def read(self, location: str) -> LocalResult:
        """Read the checkpoint at ``location`` (a file, or ``"<pack>#<offset>:<length>"``).

        Returns:
            A copy of this result with ``value`` and ``location`` set.

        Raises:
            ResultError: the location is not confined, the file is missing or unreadable,
                its header is missing/corrupt, it was written by another serializer (or a
                pickle by another Python; the message names both sides), or the payload
                does not deserialize.

        Example:
            >>> import tempfile
            >>> r = LocalResult(dir=tempfile.mkdtemp(), location="v.bin")
            >>> _ = r.write({"a": 1})
            >>> r.read("v.bin").value
            {'a': 1}
        """
        new = self.copy()
        new.value = self._read_value(location)
        new.location = location
        return new

    def read_many(self, locations: Sequence[str]) -> list[Any]:
        """Read many checkpoints at once; records of one pack share one open file.

        Use this to load the children of a large map: 100,000 records of one pack file
        cost one ``open`` and one header check.

        Raises:
            ResultError: as :meth:`read`, for the first location that fails.

        Example:
            >>> import tempfile
            >>> r = LocalResult(dir=tempfile.mkdtemp())
            >>> with r.pack_writer("p.pack") as w:
            ...     locs = [w.append(c) for c in "abc"]
            >>> r.read_many(locs)
            ['a', 'b', 'c']
        """
        values: list[Any] = [None] * len(locations)
        by_pack: dict[str, list[tuple[int, int, int]]] = {}
        for i, location in enumerate(locations):
            rel, span = _split_slice(location)
            if span is None:
                values[i] = self._read_value(location)
            else:
                by_pack.setdefault(rel, []).append((i, *span))
        deserialize = self.serializer.deserialize
        for rel, records in by_pack.items():
            with self._open_pack(rel, use_mmap=len(records) > 1) as pack:
                for i, offset, length in records:
                    data = pack.record(offset, length)
                    try:
                        values[i] = deserialize(data)
                    except Exception as err:
                        location = f"{rel}#{offset}:{length}"
                        raise _deserialize_error(self.serializer, location, err) from err
        return values

    def _read_value(self, location: str) -> Any:
        rel, span = _split_slice(location)
        if span is not None:
            with self._open_pack(rel) as pack:
                data = pack.record(span[0], span[1])
            return _deserialize(self.serializer, data, location)
        path = self._confined(rel, location)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ResultError(
                f"checkpoint {location!r} not found in result directory {os.fspath(self.dir)!r}"
            ) from None
        except OSError as err:
            raise _os_error("read checkpoint", path, err) from err
        return decode_checkpoint(data, self.serializer, location)

    def write(self, value: Any, **kwargs: Any) -> LocalResult:
        """Render :attr:`location` with ``kwargs`` and atomically write ``value`` there.

        Sub-directories are created as needed.

        Returns:
            A copy of this result with ``value`` and the rendered, relative ``location``.

        Raises:
            ResultError: unknown template key, a location that is not confined (or looks
                like a pack location ``...#<offset>:<length>``), a value the serializer
                cannot handle, or a directory that cannot be created or written (the
                message names it and the OS error).

        Example:
            >>> import tempfile
            >>> r = LocalResult(dir=tempfile.mkdtemp(), location="{flow}/{task}.bin")
            >>> r.write(3, flow="f", task="t").location
            'f/t.bin'
        """
        location = self.format(**kwargs)
        if _split_slice(location)[1] is not None:
            raise ResultError(
                f"location {location!r} ends like a pack record ('#<offset>:<length>'); "
                "choose another name"
            )
        path = self._confined(location, location)
        data = encode_checkpoint(value, self.serializer)
        _atomic_write(path, data)
        new = self.copy()
        new.value = value
        new.location = location
        return new

    # -- packs -------------------------------------------------------------------------

    def pack_writer(self, pack_location: str) -> PackWriter:
        """Open a :class:`PackWriter` appending records to ONE file at ``pack_location``.

        ``pack_location`` is a plain location (not a template), e.g.
        ``"runs/<flow_run_id>/<task_slug>.pack"``. An existing pack is appended to (after
        checking it was written with the same serializer and, for pickles, Python);
        sub-directories are created as needed.

        Raises:
            ResultError: the location is not confined, the file cannot be created, is not
                a pack, is incompatible, or another writer holds it.

        Example:
            >>> import tempfile
            >>> r = LocalResult(dir=tempfile.mkdtemp())
            >>> with r.pack_writer("run/t.pack") as w:
            ...     loc = w.append(42)
            >>> loc, r.read(loc).value
            ('run/t.pack#33:5', 42)
        """
        if _split_slice(pack_location)[1] is not None:
            raise ResultError(
                f"pack location {pack_location!r} ends like a pack record "
                "('#<offset>:<length>'); choose another name"
            )
        path = self._confined(pack_location, pack_location)
        return PackWriter(path, pack_location, self.serializer)

    def _open_pack(self, rel: str, use_mmap: bool = False) -> _PackReader:
        path = self._confined(rel, rel)
        return _PackReader(path, rel, self.serializer, self.dir, use_mmap)


def _inside(path: str, base: str) -> bool:
    if path == base:
        return False
    try:
        return os.path.commonpath([path, base]) == base
    except ValueError:  # different drives
        return False


def _split_slice(location: str) -> tuple[str, tuple[int, int] | None]:
    """Split ``"<path>#<offset>:<length>"``; a plain location gives ``(location, None)``."""
    path, sep, span = location.rpartition("#")
    if not sep or not path:
        return location, None
    offset, colon, length = span.partition(":")
    if colon and offset.isascii() and offset.isdigit() and length.isascii() and length.isdigit():
        return path, (int(offset), int(length))
    return location, None


def _make_dirs(path: Path, what: str) -> None:
    """Create ``path`` and its parents; a ResultError names the directory and the cause."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ResultError(
            f"cannot create {what} {os.fspath(path)!r}: a file is in the way (not a directory)"
        ) from None
    except OSError as err:
        raise _os_error(f"create {what}", path, err) from err


def _atomic_write(path: Path, data: bytes) -> None:
    parent = path.parent
    _make_dirs(parent, "directory")
    tmp = parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise _os_error("write in directory", parent, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _os_error("write checkpoint", path, err) from err


class _PackReader:
    """Context manager: an open pack file whose header was checked.

    ``record(offset, length, location)`` returns one record's payload; with ``use_mmap``
    the file is memory-mapped, so reading thousands of records costs no system calls.
    """

    def __init__(
        self, path: Path, location: str, serializer: Serializer, base: Path, use_mmap: bool
    ) -> None:
        self.path = path
        self.location = location
        self.serializer = serializer
        self.base = base
        self.use_mmap = use_mmap
        self.file: BinaryIO | None = None
        self.map: Any = None
        self.start = 0

    def __enter__(self) -> _PackReader:
        try:
            f: BinaryIO = open(self.path, "rb")
        except FileNotFoundError:
            raise ResultError(
                f"pack file for {self.location!r} not found in result directory "
                f"{os.fspath(self.base)!r}"
            ) from None
        except OSError as err:
            raise _os_error("read pack", self.path, err) from err
        self.file = f
        try:
            kind, name, python, self.start = _parse_header(f.read(_MAX_HEADER), self.location)
            if kind != _KIND_PACK:
                raise ResultError(
                    f"checkpoint {self.location!r}: the file is a single {kind!r} checkpoint, "
                    "not a pack; read it without '#<offset>:<length>'"
                )
            _check_compatible(name, python, self.serializer, self.location)
            if self.use_mmap:
                import mmap

                try:
                    self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError):  # e.g. a filesystem without mmap
                    self.map = None
        except BaseException:
            f.close()
            raise
        return self

    def record(self, offset: int, length: int) -> bytes:
        if offset < self.start + 4:
            raise ResultError(f"pack record {self._name(offset, length)!r} points into the header")
        end = offset + length
        framed: bytes
        if self.map is not None:
            framed = self.map[offset - 4 : end]
        else:
            assert self.file is not None
            self.file.seek(offset - 4)
            framed = self.file.read(length + 4)
        if len(framed) < length + 4:
            raise ResultError(
                f"pack record {self._name(offset, length)!r} is truncated (the pack holds fewer "
                "bytes); was the writer flushed?"
            )
        if int.from_bytes(framed[:4], "big") != length:
            raise ResultError(
                f"pack record {self._name(offset, length)!r} does not start a record of that length"
            )
        return framed[4:]

    def _name(self, offset: int, length: int) -> str:
        return f"{self.location}#{offset}:{length}"

    def __exit__(self, *exc: object) -> None:
        if self.map is not None:
            self.map.close()
        if self.file is not None:
            self.file.close()


class PackWriter:
    """Appends many values to one pack file; each append returns the value's location.

    Made by :meth:`LocalResult.pack_writer`. The file holds one header line, then for each
    value a 4-byte big-endian length and the serialized payload. A location
    ``"<pack>#<offset>:<length>"`` names one payload. Appends are thread-safe (a lock);
    values are serialized outside the lock.

    A location is readable once the writer is flushed (:meth:`flush`, :meth:`close`, or the
    end of a ``with`` block); record it (e.g. in the run store) only after that. One writer
    at a time per pack file: a second writer (in any process) raises a
    :class:`ResultError` where file locks exist. After a crash, bytes appended but never
    flushed may be missing or torn at the end; a new writer appends after them, and every
    flushed location stays valid.

    Example:
        >>> import tempfile
        >>> r = LocalResult(dir=tempfile.mkdtemp())
        >>> w = r.pack_writer("t.pack")
        >>> locs = [w.append(v) for v in (1, "two", [3])]
        >>> w.close()
        >>> [r.read(loc).value for loc in locs]
        [1, 'two', [3]]
    """

    def __init__(self, path: Path, location: str, serializer: Serializer) -> None:
        self.location = location
        self.path = path
        self.serializer = serializer
        self._lock = threading.Lock()
        self._closed = False
        # A write failed: what is still buffered cannot be written either (closing
        # then drops it instead of failing again).
        self._failed = False
        _make_dirs(path.parent, "directory")
        try:
            self._file: BinaryIO = open(path, "ab", buffering=1 << 20)
        except OSError as err:
            raise _os_error("open pack", path, err) from err
        try:
            self._lock_file()
            size = os.fstat(self._file.fileno()).st_size
            if size == 0:
                header = _header(_KIND_PACK, serializer)
                self._file.write(header)
                self._file.flush()  # the file is a valid (empty) pack from now on
                self._offset = len(header)
            else:
                with open(path, "rb") as f:
                    kind, name, python, _ = _parse_header(f.read(_MAX_HEADER), location)
                if kind != _KIND_PACK:
                    raise ResultError(
                        f"cannot append to {location!r}: it is a single {kind!r} checkpoint, "
                        "not a pack"
                    )
                _check_compatible(name, python, serializer, location)
                self._offset = size
        except BaseException:
            self._file.close()
            raise

    def _lock_file(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResultError(
                f"pack {self.location!r} is being written by another writer; use one writer "
                "per pack file"
            ) from None
        except OSError:  # a filesystem without locks: carry on
            pass

    def append(self, value: Any) -> str:
        """Serialize ``value``, append it, and return its location.

        Raises:
            ResultError: the writer is closed, the value cannot be serialized or is larger
                than 4 GiB, or the write fails.

        Example:
            >>> import tempfile
            >>> with LocalResult(dir=tempfile.mkdtemp()).pack_writer("x.pack") as w:
            ...     w.append("hello")
            'x.pack#33:20'
        """
        data = _serialize(self.serializer, value)
        length = len(data)
        if length > _MAX_RECORD:
            raise ResultError(
                f"a value of {length} bytes is too large for a pack record; use a "
                "single-file location for it"
            )
        prefix = length.to_bytes(4, "big")
        small = length < 65536
        if small:  # one write; a big value is not copied
            data = prefix + data
        with self._lock:
            if self._closed:
                raise ResultError(f"pack writer for {self.location!r} is closed")
            try:
                if not small:
                    self._file.write(prefix)
                self._file.write(data)
            except OSError as err:
                self._failed = True
                raise _os_error("append to pack", self.path, err) from err
            offset = self._offset + 4
            self._offset = offset + length
        return f"{self.location}#{offset}:{length}"

    def write_framed(self, parts: Sequence[bytes]) -> int:
        """Append records that are already framed and flush them to the file.

        For writers that serialize elsewhere (the engine's native checkpoint path):
        ``parts``, joined, must be whole records, each a 4-byte big-endian payload
        length and the payload, serialized with this writer's serializer. The record
        whose length prefix is at position ``p`` of the joined parts has the location
        ``f"{location}#{start + p + 4}:{length}"``, where ``start`` is the returned
        offset.

        Returns:
            The file offset at which the first part was written.

        Raises:
            ResultError: the writer is closed or the write fails.

        Example:
            >>> import tempfile
            >>> r = LocalResult(dir=tempfile.mkdtemp())
            >>> payload = r.serializer.serialize("hi")
            >>> with r.pack_writer("x.pack") as w:
            ...     start = w.write_framed([len(payload).to_bytes(4, "big"), payload])
            >>> r.read(f"x.pack#{start + 4}:{len(payload)}").value
            'hi'
        """
        with self._lock:
            if self._closed:
                raise ResultError(f"pack writer for {self.location!r} is closed")
            start = self._offset
            try:
                for part in parts:
                    self._file.write(part)
                    self._offset += len(part)
                self._file.flush()
            except OSError as err:
                self._failed = True
                raise _os_error("append to pack", self.path, err) from err
        return start

    def flush(self, fsync: bool = False) -> None:
        """Write buffered records to the file, so their locations are readable.

        Args:
            fsync: also ask the OS to put them on disk (slower; survives a power loss).

        Example:
            >>> import tempfile
            >>> r = LocalResult(dir=tempfile.mkdtemp())
            >>> w = r.pack_writer("x.pack")
            >>> loc = w.append(1)
            >>> w.flush()
            >>> r.read(loc).value
            1
            >>> w.close()
        """
        with self._lock:
            if self._closed:
                return
            try:
                self._file.flush()
                if fsync:
                    os.fsync(self._file.fileno())
            except OSError as err:
                self._failed = True
                raise _os_error("flush pack", self.path, err) from err

    def close(self) -> None:
        """Flush and close the file (idempotent).

        Example:
            >>> import tempfile
            >>> w = LocalResult(dir=tempfile.mkdtemp()).pack_writer("x.pack")
            >>> w.close(); w.close()
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._file.close()
            except OSError as err:
                if self._failed:  # already reported by the write that failed
                    return
                raise _os_error("close pack", self.path, err) from err

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<PackWriter {self.location!r} ({state})>"


def template_keys(template: str) -> set[str]:
    """Return the top-level keys a location template uses.

    Lets the engine check a target before running a task, or pass only what is needed.

    Example:
        >>> sorted(template_keys("{task_name}/{params[n]}/{today:%Y}.bin"))
        ['params', 'task_name', 'today']
    """
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError as err:
        raise ResultError(f"malformed location template {template!r}: {err}") from err
    return {re.split(r"[.\[]", field, maxsplit=1)[0] for field in fields}
