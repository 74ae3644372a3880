"""Frozen values declared like dataclasses, without importing `dataclasses` (and inspect with it).

The values every hot command builds (pilot.state.models) and the update state the first start after
an update reads (pilot.update.state) are Records: importing dataclasses and generating the classes
cost ~10 ms on paths whose whole budget is ~20.
"""

from __future__ import annotations


class Record:
    """A frozen value declared like a dataclass (annotated fields, then defaults), without `dataclasses`.

    `pilot status` and `pilot task list` build these on every run: importing dataclasses (and
    inspect with it) and generating four classes cost ~10 ms there. Construction (positional or
    keyword), ==, hash and repr behave as @dataclass(frozen=True) made them; as_dict() is asdict().
    """

    _fields: tuple[str, ...] = ()
    _defaults: dict[str, object]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        # The class's own annotations, in order (strings, under `from __future__ import annotations`);
        # not inspect.get_annotations: inspect is the import this class exists to avoid.
        own = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
        cls._fields = (*cls._fields, *own)
        cls._defaults = {**getattr(cls, "_defaults", {}), **{name: cls.__dict__[name] for name in own
                                                             if name in cls.__dict__}}

    def __init__(self, *args: object, **kwargs: object) -> None:
        name = type(self).__name__
        if len(args) > len(self._fields):
            raise TypeError(f"{name}() takes {len(self._fields)} arguments but {len(args)} were given")
        values = dict(zip(self._fields, args, strict=False))
        for key, value in kwargs.items():
            if key not in self._fields or key in values:
                raise TypeError(f"{name}() got an unexpected or repeated argument {key!r}")
            values[key] = value
        missing = [key for key in self._fields if key not in values and key not in self._defaults]
        if missing:
            raise TypeError(f"{name}() missing {len(missing)} required argument(s): {', '.join(missing)}")
        self.__dict__.update({key: values[key] if key in values else self._defaults[key] for key in self._fields})

    def _values(self) -> tuple:
        return tuple(self.__dict__[key] for key in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={self.__dict__[key]!r}" for key in self._fields)
        return f"{type(self).__qualname__}({fields})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def as_dict(self) -> dict[str, object]:
        """Field -> value, nested records as dicts too (what dataclasses.asdict gave)."""
        return {key: value.as_dict() if isinstance(value, Record) else value for key, value in
                zip(self._fields, self._values(), strict=True)}
