"""Stand-ins for what AITER's dispatch code imports (torch dtypes, AITER's enums and dtypes, the
environment, the arch): plain Python objects that behave as the real ones do for the operations
the dispatch performs (comparison, membership, ``.to``, ``getattr`` with a default, ``os.environ``),
and raise :class:`~.pyeval.Unbound` for anything else, so that the value becomes unknown instead of
a guess."""

from __future__ import annotations

from dataclasses import dataclass, field

from .pyeval import Unbound

__all__ = ["DType", "DTYPES", "Context", "AutoEnum", "FakeTensor", "dtypes_namespace", "torch_module", "os_module",
           "ENUM_NAMES", "ARCH_FUNCTIONS"]


class DType:
    """A dtype by its AITER name (``dtypes.bf16`` and ``torch.bfloat16`` are the same object)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return self.name


# AITER's dtypes module names -> torch's names for the same dtype. fp8 is e4m3fnuz on gfx942 and
# e4m3fn elsewhere in AITER; both torch names map to the one ``fp8`` here (the dispatch compares
# against dtypes.fp8 only).
_TORCH_NAMES = {
    "bf16": ("bfloat16",), "fp16": ("float16", "half"), "fp32": ("float32", "float"),
    "fp8": ("float8_e4m3fn", "float8_e4m3fnuz"), "fp4x2": ("float4_e2m1fn_x2",), "i4x2": ("int4",),
    "fp8_e8m0": ("float8_e8m0fnu",), "u32": ("uint32",), "i32": ("int32",), "i16": ("int16",), "i8": ("int8",),
    "u8": ("uint8",), "i64": ("int64", "long"), "u64": ("uint64",),
}
DTYPES = {name: DType(name) for name in _TORCH_NAMES}


class _Namespace:
    def __init__(self, label: str, attrs: dict):
        self._label, self._attrs = label, attrs

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._attrs[name]
        except KeyError:
            raise Unbound(f"{self._label}.{name}") from None

    def __repr__(self):
        return f"<stand-in {self._label}>"


def dtypes_namespace() -> _Namespace:
    return _Namespace("aiter.dtypes", dict(DTYPES))


def torch_module() -> _Namespace:
    attrs = {t: DTYPES[name] for name, ts in _TORCH_NAMES.items() for t in ts}
    attrs["dtype"] = DType
    return _Namespace("torch", attrs)


@dataclass
class Context:
    """What the stand-ins read: the environment (a plain dict, never ``os.environ``), the arch, and
    the environment keys asked for since ``reads`` was last cleared."""

    env: dict = field(default_factory=dict)
    arch: str = "gfx950"
    reads: set = field(default_factory=set)


class _Environ:
    def __init__(self, ctx: Context):
        self._ctx = ctx

    def get(self, key, default=None):
        self._ctx.reads.add(key)
        return self._ctx.env.get(key, default)

    def __getitem__(self, key):
        self._ctx.reads.add(key)
        return self._ctx.env[key]

    def __contains__(self, key):
        self._ctx.reads.add(key)
        return key in self._ctx.env

    def __setitem__(self, key, value):
        self._ctx.env[key] = value

    def setdefault(self, key, value):
        self._ctx.reads.add(key)
        return self._ctx.env.setdefault(key, value)


def os_module(ctx: Context) -> _Namespace:
    environ = _Environ(ctx)
    return _Namespace("os", {"environ": environ, "getenv": environ.get})


class _Member:
    __slots__ = ("owner", "name")

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    @property
    def value(self):
        return self.name

    def __repr__(self):
        return f"{self.owner._label}.{self.name}"


class AutoEnum:
    """An AITER enum (ActivationType, QuantType, GateMode): a member per attribute name, the same
    object each time; calling it with a member, or a member's name in any case, gives the member."""

    def __init__(self, label: str):
        self._label, self._members = label, {}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._members.setdefault(name.lower(), _Member(self, name))

    def __call__(self, value):
        if isinstance(value, _Member) and value.owner is self:
            return value
        if isinstance(value, str):
            return self.__getattr__(value)
        raise Unbound(f"{self._label}({value!r})")

    def member(self, name: str) -> _Member:
        return self.__getattr__(name)


ENUM_NAMES = ("ActivationType", "QuantType", "GateMode")
ARCH_FUNCTIONS = ("get_gfx", "get_gfx_runtime")


def _tensor_attributes() -> frozenset:
    try:
        import torch

        return frozenset(dir(torch.Tensor))
    except ImportError:
        return frozenset()


_TENSOR_ATTRIBUTES = _tensor_attributes()


class FakeTensor:
    """A tensor's dtype, shape and the flags set on it (``is_shuffled``); ``getattr`` of any other
    name that is not a torch.Tensor attribute raises AttributeError, as on a real tensor."""

    def __init__(self, dtype: DType, shape: tuple, **flags):
        self.dtype, self.shape, self._flags = dtype, tuple(shape), flags

    def __getattr__(self, name):
        if name.startswith("__") or name == "_flags":
            raise AttributeError(name)
        if name in self._flags:
            return self._flags[name]
        if name in _TENSOR_ATTRIBUTES:
            raise Unbound(f"tensor.{name}")
        raise AttributeError(name)

    def to(self, dtype):
        if not isinstance(dtype, DType):
            raise Unbound("tensor.to")
        return FakeTensor(dtype, self.shape, **self._flags)

    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    def dim(self):
        return len(self.shape)

    def size(self, i=None):
        return self.shape if i is None else self.shape[i]
