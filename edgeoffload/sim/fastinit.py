"""Cheaper construction of the frozen, slotted dataclasses built once per simulated frame.

A frozen dataclass's generated `__init__` routes every field through
`object.__setattr__` to get past the frozen guard; for Observation, two SiteStates and a
FrameRecord per frame that is about half of the simulator's per-frame cost. The
constructor built here writes the slots directly through their descriptors, which yields
an identical object (same fields, equality, hash, repr) in less than half the time.
It is only used for classes where that is provably equivalent: slotted, no
`__post_init__`, fields passed positionally in declaration order. Fields with a default
may be left out, as with the class itself, so a field added at the end of a record with a
default does not break the callers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

_FACTORY = object()   # stands for "not given" where the field's default comes from a factory


def direct_constructor(cls: type) -> Callable[..., Any]:
    """A positional constructor for `cls` (its fields in declaration order, defaults as the
    class has them), or `cls` itself when the shortcut would not be equivalent."""
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__") or "__slots__" not in cls.__dict__:
        return cls
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_FACTORY": _FACTORY}
    parameters, body = [], []
    for index, field in enumerate(dataclasses.fields(cls)):
        namespace[f"_set{index}"] = cls.__dict__[field.name].__set__
        if field.default is not dataclasses.MISSING:
            namespace[f"_default{index}"] = field.default
            parameters.append(f"{field.name}=_default{index}")
        elif field.default_factory is not dataclasses.MISSING:
            namespace[f"_factory{index}"] = field.default_factory
            parameters.append(f"{field.name}=_FACTORY")
            body.append(f"    if {field.name} is _FACTORY:\n        {field.name} = _factory{index}()\n")
        else:
            parameters.append(field.name)
        body.append(f"    _set{index}(obj, {field.name})\n")
    source = f"def construct({', '.join(parameters)}):\n    obj = _new(_cls)\n{''.join(body)}    return obj\n"
    exec(compile(source, f"<direct constructor of {cls.__name__}>", "exec"), namespace)  # names come from the dataclass
    construct = namespace["construct"]
    construct.__doc__ = f"Build a {cls.__name__} from its fields, positionally (defaults as the class has them)."
    return construct


__all__ = ["direct_constructor"]
