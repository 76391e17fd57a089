"""Named extension points: every pluggable piece of a method is looked up by name in a `Registry`.

A registry maps names to objects of one kind (saliencies, local pruners, fitness functions,
mutations, sparse pruners, ...). `register(name)` adds one, as a decorator or a call; `get(name)`
returns it or fails with a `TyrjaxError` that names the registered choices.

A name is registered once: registering another object under a taken name is refused unless
`replace=True` (registering the same object again is a no-op). Compiled functions that take a
name as a static argument (the saliency and fitness names are) keep the object they were
compiled with, so replace an entry before its first use, or call `jax.clear_caches()` after.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar, overload

from tyrjax.errors import TyrjaxError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Objects of one kind by name, in registration order; read like a mapping.

    `kind` names the extension point in messages ("saliency"); `home` is where users reach the
    registry (its `register` is what the error message tells them to call).
    """

    def __init__(self, kind: str, home: str):
        self.kind = kind
        self.home = home
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, obj: None = None, *, replace: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, replace: bool = False) -> T: ...

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """Register `obj` under `name`; without `obj`, a decorator that registers what it decorates."""
        if not isinstance(name, str) or not name:
            raise TyrjaxError(f"a {self.kind} name must be a non-empty string; got {name!r}")

        def add(entry: T) -> T:
            taken = self._entries.get(name)
            if taken is not None and taken is not entry and not replace:
                raise TyrjaxError(
                    f"a {self.kind} named {name!r} is already registered; pick another name or pass replace=True"
                )
            self._entries[name] = entry
            return entry

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> T:
        """Remove `name` and return what was registered under it."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:  # type: ignore[override]
        """The object registered under `name`; an unknown name fails naming the choices."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise TyrjaxError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._entries)) or 'none'} "
                f"(add one with {self.home}.register)"
            ) from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
