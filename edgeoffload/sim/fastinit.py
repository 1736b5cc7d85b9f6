"""Cheaper construction of the frozen, slotted dataclasses built once per simulated frame.

A frozen dataclass's generated `__init__` routes every field through
`object.__setattr__` to get past the frozen guard; for Observation, two SiteStates and a
FrameRecord per frame that is about half of the simulator's per-frame cost. The
constructor built here writes the slots directly through their descriptors, which yields
an identical object (same fields, equality, hash, repr) in less than half the time.
It is only used for classes where that is provably equivalent: slotted, no
`__post_init__`, every field passed positionally (a field with a plain default may be left out,
as with the dataclass's own constructor).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


def direct_constructor(cls: type) -> Callable[..., Any]:
    """A positional-only constructor for `cls` (all fields, in declaration order), or `cls`
    itself when the shortcut would not be equivalent."""
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__") or "__slots__" not in cls.__dict__:
        return cls
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_missing": dataclasses.MISSING}
    parameters, body = [], ""
    for index, f in enumerate(dataclasses.fields(cls)):
        namespace[f"_set{index}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            namespace[f"_default{index}"] = f.default
            parameters.append(f"{f.name}=_default{index}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory{index}"] = f.default_factory
            parameters.append(f"{f.name}=_missing")
            body += f"    if {f.name} is _missing:\n        {f.name} = _factory{index}()\n"
        else:
            parameters.append(f.name)
        body += f"    _set{index}(obj, {f.name})\n"
    source = f"def construct({', '.join(parameters)}):\n    obj = _new(_cls)\n{body}    return obj\n"
    exec(compile(source, f"<direct constructor of {cls.__name__}>", "exec"), namespace)  # names come from the dataclass
    construct = namespace["construct"]
    construct.__doc__ = f"Build a {cls.__name__} from all its fields, positionally."
    return construct


__all__ = ["direct_constructor"]
