"""Cache validators: may an earlier successful result be reused?

A task with ``cache_for=timedelta(...)`` stores its result with an expiration; the next
time it is about to run, its ``cache_validator`` decides whether that entry still holds.
A validator is called as ``validator(entry, inputs, parameters) -> bool`` (Prefect 1.x
semantics):

- ``entry``: the earlier run's cache record, a :class:`CacheEntry` (or any object with
  Prefect's ``cache_expiration``, ``cached_inputs``, ``cached_parameters`` attributes);
- ``inputs``: the task's inputs for this run, by argument name;
- ``parameters``: the flow's parameters for this run.

Validators: :func:`never_use`, :func:`duration_only` (Prefect's default),
:func:`all_inputs`, :func:`all_parameters`, and the factories
:func:`partial_inputs_only` / :func:`partial_parameters_only`. Every validator except
:func:`never_use` first requires that the entry has not expired.

A durable cache (kept in the run store across processes) can store *hashes* instead of
values: :meth:`CacheEntry.with_hashes` records :func:`canonical_hash` of each input and
parameter, and the validators then compare hashes. :func:`canonical_hash` is a stable
SHA-256 of a canonical, type-tagged encoding of a value: the same in every process and on
every run, never dependent on memory addresses.

Example:
    >>> from datetime import datetime, timedelta, timezone
    >>> from ferroflow.cache_validators import CacheEntry, all_inputs, duration_only
    >>> later = datetime.now(timezone.utc) + timedelta(hours=1)
    >>> entry = CacheEntry(expiration=later, inputs={"x": 1}, parameters={"n": 3})
    >>> duration_only(entry, {"x": 2}, {}), all_inputs(entry, {"x": 1}, {})
    (True, True)
    >>> all_inputs(entry, {"x": 2}, {})
    False
    >>> all_inputs(CacheEntry.with_hashes(later, {"x": 1}, {"n": 3}), {"x": 1}, {})
    True
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any

__all__ = [
    "CacheEntry",
    "CacheValidator",
    "all_inputs",
    "all_parameters",
    "canonical_hash",
    "duration_only",
    "never_use",
    "partial_inputs_only",
    "partial_parameters_only",
]

#: The type of a validator: ``(entry, inputs, parameters) -> bool``.
CacheValidator = Callable[[Any, Mapping[str, Any], Mapping[str, Any]], bool]


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """What the cache keeps about one earlier successful run.

    ``ferroflow.states.Cached`` carries no cache fields, so validators take this record as
    their ``state`` argument. It also answers to Prefect's attribute names
    (``cache_expiration``, ``cached_inputs``, ``cached_parameters``).

    Args:
        expiration: when the entry stops being valid (tz-aware; a naive datetime is taken
            as UTC). ``None`` never expires.
        inputs: the task's inputs on that run, by argument name (values, or hashes if
            ``hashed``).
        parameters: the flow's parameters on that run (values, or hashes if ``hashed``).
        hashed: ``inputs`` and ``parameters`` hold :func:`canonical_hash` strings rather
            than values; validators then hash the current values to compare. Build such an
            entry with :meth:`with_hashes`.

    Example:
        >>> from datetime import datetime, timezone
        >>> e = CacheEntry(datetime(2000, 1, 1, tzinfo=timezone.utc), {"x": 1})
        >>> e.is_expired(), e.cached_inputs
        (True, {'x': 1})
    """

    expiration: _dt.datetime | None = None
    inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    hashed: bool = False

    @classmethod
    def with_hashes(
        cls,
        expiration: _dt.datetime | None,
        inputs: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> CacheEntry:
        """Make an entry that stores :func:`canonical_hash` of each value, not the value.

        Small, picklable and JSON-able whatever the inputs are: what a durable cache
        should store. A value that cannot be hashed is recorded as unhashable and never
        matches (the cache is then only ever a miss for validators that look at it).

        Example:
            >>> e = CacheEntry.with_hashes(None, {"x": [1, 2]})
            >>> e.inputs["x"] == canonical_hash([1, 2])
            True
        """
        return cls(
            expiration=expiration,
            inputs=_hash_values(inputs or {}),
            parameters=_hash_values(parameters or {}),
            hashed=True,
        )

    @property
    def cache_expiration(self) -> _dt.datetime | None:
        """Prefect's name for :attr:`expiration`."""
        return self.expiration

    @property
    def cached_inputs(self) -> Mapping[str, Any]:
        """Prefect's name for :attr:`inputs`."""
        return self.inputs

    @property
    def cached_parameters(self) -> Mapping[str, Any]:
        """Prefect's name for :attr:`parameters`."""
        return self.parameters

    def is_expired(self, now: _dt.datetime | None = None) -> bool:
        """Whether the entry has expired at ``now`` (default: the current UTC time).

        Valid while ``now < expiration``; at the expiration instant it has expired.

        Example:
            >>> from datetime import datetime, timezone
            >>> CacheEntry(None).is_expired()
            False
        """
        return _is_expired(self.expiration, now)


def _hash_values(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        try:
            out[key] = canonical_hash(value)
        except (TypeError, ValueError):
            out[key] = None  # unhashable: never equal to a current hash
    return out


def _as_utc(moment: _dt.datetime) -> _dt.datetime:
    if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
        return moment.replace(tzinfo=_dt.timezone.utc)
    return moment


def _is_expired(expiration: _dt.datetime | None, now: _dt.datetime | None = None) -> bool:
    if expiration is None:
        return False
    current = _dt.datetime.now(_dt.timezone.utc) if now is None else _as_utc(now)
    return _as_utc(expiration) <= current


_Fields = tuple[_dt.datetime | None, Mapping[str, Any], Mapping[str, Any], bool]


def _entry_fields(state: Any) -> _Fields:
    if isinstance(state, CacheEntry):
        return state.expiration, state.inputs, state.parameters, state.hashed
    return (
        getattr(state, "cache_expiration", None),
        getattr(state, "cached_inputs", None) or {},
        getattr(state, "cached_parameters", None) or {},
        bool(getattr(state, "hashed", False)),
    )


def _unwrap(value: Any) -> Any:
    # Prefect keeps cached inputs as Result objects; compare their values.
    from_result = sys.modules.get("ferroflow.results")
    if from_result is not None and isinstance(value, from_result.Result):
        return value.value
    return value


def _same(cached: Any, current: Any, hashed: bool) -> bool:
    """Whether a cached value (or hash) matches a current value; never raises."""
    if hashed:
        if cached is None:
            return False
        try:
            return bool(cached == canonical_hash(current))
        except (TypeError, ValueError):
            return False
    try:
        return bool(_unwrap(cached) == current)
    except Exception:  # e.g. numpy arrays: ambiguous truth value
        try:
            return canonical_hash(_unwrap(cached)) == canonical_hash(current)
        except (TypeError, ValueError):
            return False


def _same_mapping(
    cached: Mapping[str, Any],
    current: Mapping[str, Any],
    hashed: bool,
    keys: Iterable[str] | None = None,
) -> bool:
    if keys is None:
        if set(cached) != set(current):
            return False
        keys = cached
    for key in keys:
        in_cached, in_current = key in cached, key in current
        if in_cached != in_current:
            return False
        if in_cached and not _same(cached[key], current[key], hashed):
            return False
    return True


def _fresh_and_same(
    state: Any,
    current: Mapping[str, Any],
    on_parameters: bool,
    keys: Iterable[str] | None = None,
) -> bool:
    """Whether ``state`` has not expired and its cached inputs (or, with ``on_parameters``,
    parameters) match ``current``: all of them, or only ``keys``."""
    expiration, inputs, parameters, hashed = _entry_fields(state)
    if _is_expired(expiration):
        return False
    return _same_mapping(parameters if on_parameters else inputs, current or {}, hashed, keys)


def never_use(state: Any, inputs: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    """Never reuse a cached result.

    Example:
        >>> never_use(CacheEntry(), {}, {})
        False
    """
    return False


def duration_only(state: Any, inputs: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    """Reuse the cached result while it has not expired (whatever the inputs).

    An entry without an expiration never expires.

    Example:
        >>> from datetime import datetime, timedelta, timezone
        >>> past = datetime.now(timezone.utc) - timedelta(seconds=1)
        >>> duration_only(CacheEntry(past), {}, {}), duration_only(CacheEntry(None), {}, {})
        (False, True)
    """
    expiration, _, _, _ = _entry_fields(state)
    return not _is_expired(expiration)


def all_inputs(state: Any, inputs: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    """Reuse while not expired and the inputs equal the cached inputs (same names, ``==``).

    Example:
        >>> all_inputs(CacheEntry(None, {"x": 1, "y": 2}), {"x": 1, "y": 2}, {})
        True
        >>> all_inputs(CacheEntry(None, {"x": 1, "y": 2}), {"x": 1}, {})
        False
    """
    return _fresh_and_same(state, inputs, on_parameters=False)


def all_parameters(state: Any, inputs: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    """Reuse while not expired and the flow's parameters equal the cached parameters.

    Example:
        >>> all_parameters(CacheEntry(None, parameters={"n": 1}), {}, {"n": 1})
        True
        >>> all_parameters(CacheEntry(None, parameters={"n": 1}), {}, {"n": 2})
        False
    """
    return _fresh_and_same(state, parameters, on_parameters=True)


def _partial(name: str, validate_on: Iterable[str] | None, on_parameters: bool) -> CacheValidator:
    """The validator ``name(validate_on)`` makes: compare only the inputs (or parameters)
    named in ``validate_on``; with ``None``, only the expiration counts."""
    if isinstance(validate_on, str):
        raise TypeError(
            f"{name}(validate_on=...) takes a list of names, not the string {validate_on!r}"
        )
    keys = None if validate_on is None else list(validate_on)

    def validator(state: Any, inputs: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
        if keys is None:
            return duration_only(state, inputs, parameters)
        current = parameters if on_parameters else inputs
        return _fresh_and_same(state, current, on_parameters, keys)

    validator.__name__ = f"_{name}"
    validator.__qualname__ = f"{name}.<locals>._{name}"
    validator.validate_on = keys  # type: ignore[attr-defined]
    return validator


def partial_inputs_only(validate_on: Iterable[str] | None = None) -> CacheValidator:
    """Make a validator comparing only the inputs named in ``validate_on``.

    Valid while not expired and each named input has the same value now as when cached (a
    name missing on both sides matches; on one side only, it does not). With
    ``validate_on=None`` only the expiration counts.

    Raises:
        TypeError: ``validate_on`` is a bare string.

    Example:
        >>> v = partial_inputs_only(["x"])
        >>> v(CacheEntry(None, {"x": 1, "y": 2}), {"x": 1, "y": 99}, {})
        True
        >>> v(CacheEntry(None, {"x": 1, "y": 2}), {"x": 5, "y": 2}, {})
        False
    """
    return _partial("partial_inputs_only", validate_on, on_parameters=False)


def partial_parameters_only(validate_on: Iterable[str] | None = None) -> CacheValidator:
    """Make a validator comparing only the flow parameters named in ``validate_on``.

    Same rules as :func:`partial_inputs_only`, over the parameters.

    Raises:
        TypeError: ``validate_on`` is a bare string.

    Example:
        >>> v = partial_parameters_only(["n"])
        >>> v(CacheEntry(None, parameters={"n": 1, "m": 2}), {}, {"n": 1, "m": 3})
        True
    """
    return _partial("partial_parameters_only", validate_on, on_parameters=True)


# ------------------------------------------------------------------------ canonical hash

_CANON_VERSION = b"ferroflow-canonical-v1\x00"
_ADDRESS_RE = re.compile(r"\bat 0x[0-9a-fA-F]+")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _atom(tag: bytes, payload: bytes) -> bytes:
    return tag + len(payload).to_bytes(8, "big") + payload


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)


def _float_bytes(value: float) -> bytes:
    if math.isnan(value):
        return b"nan"  # every NaN is one value here
    return value.hex().encode("ascii")


class _Encoder:
    """Encodes a value as type-tagged, length-prefixed bytes (a prefix-free code)."""

    def __init__(self) -> None:
        self.active: set[int] = set()

    def encode(self, value: Any) -> bytes:
        kind = type(value)
        # Exact builtin scalars first: the common case.
        if value is None:
            return b"N"
        if kind is bool:
            return b"T" if value else b"F"
        if kind is int:
            return _atom(b"i", _int_bytes(value))
        if kind is str:
            return _atom(b"s", value.encode("utf-8", "surrogatepass"))
        if kind is float:
            return _atom(b"f", _float_bytes(value))
        if kind is bytes:
            return _atom(b"b", value)
        if kind in (list, tuple, dict, set, frozenset):
            return self._container(value, kind, b"")
        return self._other(value, kind)

    def _container(self, value: Any, kind: type, subclass: bytes) -> bytes:
        marker = id(value)
        if marker in self.active:
            raise ValueError(f"cannot hash a self-referencing {kind.__name__}: it contains itself")
        self.active.add(marker)
        try:
            if issubclass(kind, dict):
                items = sorted(self.encode(k) + self.encode(v) for k, v in value.items())
                tag = b"d"
            elif issubclass(kind, set | frozenset):
                items = sorted(self.encode(item) for item in value)
                tag = b"S" if issubclass(kind, set) else b"Z"
            else:
                items = [self.encode(item) for item in value]
                tag = b"l" if issubclass(kind, list) else b"t"
        finally:
            self.active.discard(marker)
        head = tag + subclass + len(items).to_bytes(8, "big")
        return head + b"".join(items)

    def _other(self, value: Any, kind: type) -> bytes:
        if isinstance(value, Enum):
            return _atom(b"e", f"{_qualname(kind)}.{value.name}".encode())
        if isinstance(value, int | str | float | bytes):
            # A subclass of a builtin scalar: its class, then the builtin value (taken
            # without calling methods the subclass may override).
            if isinstance(value, int):
                plain: Any = int.__index__(value)
            elif isinstance(value, str):
                plain = str.__str__(value)
            elif isinstance(value, float):
                plain = float.__float__(value)
            else:
                plain = bytes(memoryview(value))
            return _atom(b"C", _qualname(kind).encode()) + self.encode(plain)
        if isinstance(value, list | tuple | dict | set | frozenset):
            if isinstance(value, tuple) and hasattr(value, "_fields"):
                # A namedtuple: its class and its fields, in order.
                return self._fields(value, kind, list(zip(value._fields, value, strict=True)))
            return self._container(value, kind, _atom(b"C", _qualname(kind).encode()))
        if isinstance(value, bytearray | memoryview):
            return _atom(b"B", bytes(value))
        if isinstance(value, complex):
            return _atom(b"j", _float_bytes(value.real) + b"," + _float_bytes(value.imag))
        if isinstance(value, _dt.datetime):
            payload = f"{value.isoformat()}|{value.fold}".encode()
            return _atom(b"D", payload)
        if isinstance(value, _dt.date):
            return _atom(b"a", value.isoformat().encode())
        if isinstance(value, _dt.time):
            return _atom(b"h", f"{value.isoformat()}|{value.fold}".encode())
        if isinstance(value, _dt.timedelta):
            td = f"{value.days},{value.seconds},{value.microseconds}"
            return _atom(b"q", td.encode())
        # Types from modules that may not be loaded: a value of one implies its module is.
        modules = sys.modules
        decimal = modules.get("decimal")
        if decimal is not None and isinstance(value, decimal.Decimal):
            return _atom(b"m", str(value).encode())
        fractions = modules.get("fractions")
        if fractions is not None and isinstance(value, fractions.Fraction):
            return _atom(b"r", f"{value.numerator}/{value.denominator}".encode())
        uuid = modules.get("uuid")
        if uuid is not None and isinstance(value, uuid.UUID):
            return _atom(b"u", value.bytes)
        pathlib = modules.get("pathlib")
        if pathlib is not None and isinstance(value, pathlib.PurePath):
            flavour = b"w" if isinstance(value, pathlib.PureWindowsPath) else b"p"
            return _atom(b"P" + flavour, str(value).encode("utf-8", "surrogateescape"))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = [
                (f.name, getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare
            ]
            return self._fields(value, kind, fields)
        pydantic = modules.get("pydantic")
        if pydantic is not None and isinstance(value, pydantic.BaseModel):
            return self._fields(value, kind, list(value.model_dump(mode="python").items()))
        numpy = modules.get("numpy")
        if numpy is not None and isinstance(value, numpy.ndarray | numpy.generic):
            array = numpy.ascontiguousarray(value)
            if array.dtype.hasobject:
                return self._container(array.tolist(), list, _atom(b"C", b"numpy.ndarray"))
            meta = f"{array.dtype.str}|{array.shape}".encode()
            return _atom(b"n", meta) + _atom(b"b", array.tobytes())
        return self._repr(value, kind)

    def _fields(self, value: Any, kind: type, fields: list[tuple[str, Any]]) -> bytes:
        marker = id(value)
        if marker in self.active:
            raise ValueError(f"cannot hash a self-referencing {kind.__name__}: it contains itself")
        self.active.add(marker)
        try:
            parts = [self.encode(name) + self.encode(item) for name, item in fields]
        finally:
            self.active.discard(marker)
        head = _atom(b"o", _qualname(kind).encode()) + len(parts).to_bytes(8, "big")
        return head + b"".join(parts)

    def _repr(self, value: Any, kind: type) -> bytes:
        if getattr(kind, "__repr__", object.__repr__) is object.__repr__:
            raise TypeError(
                f"cannot hash a value of type {_qualname(kind)} for a cache key: it has no "
                "canonical form (not a builtin, dataclass or pydantic model, and no custom "
                "__repr__); pass a hashable summary of it, or set cache_key"
            )
        text = repr(value)
        if _ADDRESS_RE.search(text):
            raise TypeError(
                f"cannot hash a value of type {_qualname(kind)} for a cache key: its repr "
                f"{text[:80]!r} depends on a memory address"
            )
        return _atom(b"R", f"{_qualname(kind)}|{text}".encode("utf-8", "surrogatepass"))


def canonical_hash(value: Any) -> str:
    """A stable SHA-256 (hex) of a canonical, type-tagged encoding of ``value``.

    Stable across processes, runs and machines of one platform: it never depends on
    memory addresses, ``PYTHONHASHSEED``, dict insertion order or set iteration order.

    Canonical forms:

    - ``None``, ``bool``, ``int``, ``float`` (exact, via ``float.hex``; all NaNs are one
      value; ``-0.0`` differs from ``0.0``), ``complex``, ``str``, ``bytes``,
      ``bytearray``/``memoryview`` (tagged apart from ``bytes``);
    - ``list`` and ``tuple`` in order; ``dict`` as its (key, value) pairs sorted by their
      encoding (so insertion order does not matter); ``set``/``frozenset`` sorted by
      encoding;
    - ``datetime`` (ISO form with its UTC offset: the same instant in two time zones hashes
      differently), ``date``, ``time``, ``timedelta``, ``Decimal`` (as ``str``, so
      ``Decimal("1.0")`` and ``Decimal("1.00")`` differ), ``Fraction``, ``UUID``,
      ``pathlib`` paths, ``Enum`` members (class and member name);
    - dataclasses (class name and the fields that take part in ``==``), pydantic models
      (class name and ``model_dump()``), namedtuples (class and fields), subclasses of the
      builtins (class name and builtin value), numpy arrays and scalars (dtype, shape,
      bytes) -- recursively;
    - anything else: ``repr()``, but only if the class defines its own ``__repr__`` and the
      result shows no memory address (``at 0x...``); otherwise :class:`TypeError`.

    **Types are tagged**: values that are ``==`` in Python but of different types hash
    differently (``1``, ``1.0``, ``True``, ``Decimal(1)``; ``(1,)`` and ``[1]``;
    ``b"a"`` and ``bytearray(b"a")``). A cache key can then only miss where the task
    might behave differently, never hit wrongly.

    Raises:
        TypeError: a value (at any depth) has no canonical form; the message names its type.
        ValueError: a container contains itself.

    Example:
        >>> canonical_hash({"b": 1, "a": [1, 2.5]}) == canonical_hash({"a": [1, 2.5], "b": 1})
        True
        >>> len({canonical_hash(1), canonical_hash(1.0), canonical_hash(True)})
        3
        >>> canonical_hash(object())
        Traceback (most recent call last):
        ...
        TypeError: cannot hash a value of type builtins.object for a cache key: ...
    """
    from hashlib import sha256

    return sha256(_CANON_VERSION + _Encoder().encode(value)).hexdigest()
