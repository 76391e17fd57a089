"""Device meshes and logical-axis sharding.

Every array dimension tyrjax lays out on devices carries a logical name (`embed`, `heads`,
`kv_heads`, `head_dim`, `mlp`, `vocab`, `batch`, `seq`, `level`, `gram_rows`, `candidate`, `layers`), and
one table, `LOGICAL_AXIS_RULES`, maps each name to the mesh axes it may be split over. A
`PartitionSpec` is derived per array from its shape: a mesh axis that does not divide the
dimension, or that an earlier dimension of the same array already uses, is skipped, so the
dimension stays replicated (9 heads over `tensor=2` are not split). Head dimensions are stored
flattened (`heads × head_dim`); a mesh axis splits them only in whole heads.

Phases run under a mesh through `sharded_call`: `jax.jit` with `in_shardings` and
`out_shardings` built from the same table, compiled once per function, shapes and layout.
Without a mesh nothing here is used and every phase runs as on one device.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from tyrjax.errors import TyrjaxError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical dimension name -> the mesh axes it may be split over, in order of preference.
LOGICAL_AXIS_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),  # calibration / evaluation windows
    "candidate": ("data",),  # search candidates scored at once
    "level": ("data", "fsdp", "tensor"),  # a supernet layer's sparsity levels: one share per device
    "gram_rows": ("data", "fsdp"),  # a layer's input Gram: rows over the devices its tokens are summed over
    "seq": (),
    "embed": ("fsdp",),  # the hidden size: weights are split over fsdp
    "heads": ("tensor",),  # query heads × head_dim
    "kv_heads": ("tensor",),  # key/value heads × head_dim
    "head_dim": (),
    "mlp": ("tensor",),  # MLP neurons
    "vocab": ("tensor",),
    "layers": (),  # the stacked (scanned) layer axis
}

FLATTENED_HEADS = ("heads", "kv_heads")


class Axes(tuple):
    """The logical names of one array's dimensions (None: never split); a pytree leaf.

    Fewer names than dimensions leave the trailing dimensions replicated, so `Axes()` is a
    fully replicated array of any rank.
    """

    def __new__(cls, *names: str | None) -> "Axes":
        for n in names:
            if n is not None and n not in LOGICAL_AXIS_RULES:
                raise TyrjaxError(f"logical axis {n!r} is unknown; known: {', '.join(LOGICAL_AXIS_RULES)}")
        return super().__new__(cls, names)

    def __repr__(self) -> str:
        return f"Axes{tuple(self)!r}"


REPLICATED = Axes()


def is_axes(x: Any) -> bool:
    return isinstance(x, Axes)


def batch_axes(ndim: int) -> Axes:
    """Axes of inputs (windows, [tokens,] features) split by windows only, as statistics that sum
    over every token see them."""
    return Axes("batch", *(["seq"] if ndim > 2 else []))


HIDDEN = Axes("batch", "seq", "embed")  # a block's input / output
HEADS_OUT = Axes("batch", "seq", "heads")  # the input of o_proj
MLP_HIDDEN = Axes("batch", "seq", "mlp")  # the input of down_proj
GRAM = Axes("gram_rows")  # a (d_in, d_in) Gram, its rows split as its tokens were (the sum scatters them)


# --- meshes --------------------------------------------------------------------------------
def parse_mesh(text: str, n_devices: int) -> dict[str, int]:
    """Axis sizes from `data=4,tensor=2` (`auto`: every device on `data`).

    Axes not named have size 1, except that when `data` is not named it takes the devices the
    other axes leave (`tensor=2` on 8 devices is `data=4,tensor=2`).
    """
    text = text.strip()
    sizes: dict[str, int] = {}
    if text != "auto":
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in MESH_AXES:
                raise TyrjaxError(
                    f"--mesh {text!r}: {part!r} is not AXIS=SIZE with AXIS one of {', '.join(MESH_AXES)} "
                    "(e.g. data=4,tensor=2, or auto)"
                )
            if name in sizes:
                raise TyrjaxError(f"--mesh {text!r}: axis {name} is given twice")
            try:
                sizes[name] = int(value)
            except ValueError:
                sizes[name] = 0
            if sizes[name] < 1:
                raise TyrjaxError(f"--mesh {text!r}: {name}={value.strip()!r} must be a positive integer")
    named = math.prod(sizes.values())
    if "data" not in sizes:
        if n_devices % named:
            raise TyrjaxError(
                f"--mesh {text!r}: the named axes hold {named} devices, which does not divide the {n_devices} "
                "available; pick sizes whose product divides the device count"
            )
        sizes["data"] = n_devices // named
    total = math.prod(sizes.values())
    if total != n_devices:
        raise TyrjaxError(
            f"--mesh {text!r} needs {total} devices but {n_devices} are available; make the sizes multiply to "
            f"{n_devices} (or leave data out to let it take the rest)"
        )
    return {axis: sizes.get(axis, 1) for axis in MESH_AXES}


def make_mesh(text: str = "auto", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(text, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def axis_size(mesh: Mesh, name: str) -> int:
    """How many ways arrays whose dimension is named `name` are split at most on `mesh`."""
    return math.prod(mesh.shape[a] for a in LOGICAL_AXIS_RULES[name] if a in mesh.shape)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# --- specs ---------------------------------------------------------------------------------
def spec(
    names: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    head_dim: int = 1,
) -> PartitionSpec:
    """The PartitionSpec of one array: each named dimension over the rule's mesh axes that
    divide it (in whole heads for flattened head dimensions) and are still unused."""
    if len(names) > len(shape):
        raise TyrjaxError(f"logical axes {tuple(names)} name more dimensions than the shape {tuple(shape)} has")
    used: set[str] = set()
    entries: list[Any] = []
    for name, dim in zip(names, shape):
        unit = head_dim if name in FLATTENED_HEADS else 1
        chosen, split = [], 1
        for axis in LOGICAL_AXIS_RULES[name] if name is not None else ():
            size = mesh.shape.get(axis, 1)
            if size == 1 or axis in used or dim % (unit * split * size):
                continue
            chosen.append(axis)
            split *= size
        used.update(chosen)
        entries.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def shards(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, head_dim: int = 1) -> int:
    """Into how many pieces `spec` cuts an array of `shape` on `mesh`."""
    axes = [a for entry in spec(names, shape, mesh, head_dim) if entry is not None
            for a in ((entry,) if isinstance(entry, str) else entry)]
    return math.prod(mesh.shape[a] for a in axes)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def shardings(tree: Any, axes: Any, mesh: Mesh, head_dim: int = 1) -> Any:
    """NamedShardings parallel to `tree` from `axes`, a tree of `Axes` that is a prefix of it
    (one `Axes` leaf applies to every array below it)."""

    def leaf(ax: Axes, sub: Any) -> Any:
        return jax.tree_util.tree_map(lambda a: NamedSharding(mesh, spec(ax, _shape(a), mesh, head_dim)), sub)

    return jax.tree_util.tree_map(leaf, axes, tree, is_leaf=is_axes)


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array):
        if x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if not x.is_fully_addressable or sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
    host = np.asarray(x)
    if sharding.is_fully_addressable:
        return jax.device_put(host, sharding)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put(tree: Any, tree_shardings: Any) -> Any:
    """Lay out every array of `tree` as its sharding says (a no-op where it already is).

    Host values must be equal on every process; each process places its own shards.
    """
    return jax.tree_util.tree_map(_place, tree, tree_shardings)


def put_axes(tree: Any, axes: Any, mesh: Mesh, head_dim: int = 1) -> Any:
    """`put` with the shardings of `axes` on `mesh`."""
    return put(tree, shardings(tree, axes, mesh, head_dim))


def host_array(x: Any) -> np.ndarray:
    """The whole value of an array as numpy on this process, however it is laid out."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def local_tree(tree: Any) -> Any:
    """Every device array of `tree` gathered onto this process's default device (numpy arrays
    stay as they are): the form a sharded phase returns, identical on every process."""
    return jax.tree_util.tree_map(lambda a: a if isinstance(a, np.ndarray) else jnp.asarray(host_array(a)), tree)








# --- sharded jit ---------------------------------------------------------------------------
_COMPILED: dict[Any, Callable] = {}


def _signature(values: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(values)
    return treedef, tuple((_shape(a), str(getattr(a, "dtype", type(a).__name__))) for a in leaves)


def _hashable(tree: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_axes)
    return treedef, tuple(leaves)


def sharded_call(
    fn: Callable,
    mesh: Mesh,
    inputs: Mapping[str, tuple[Any, Any]],
    out_axes: Any,
    *,
    head_dim: int = 1,
    static: Mapping[str, Any] | None = None,
) -> Any:
    """`fn(**arrays, **static)` jitted on `mesh` with `in_shardings` / `out_shardings` from
    logical axes. `inputs` maps each array argument's name to `(value, axes)`; `out_axes` is
    a tree of `Axes` (a prefix of the result). Inputs are laid out first (no-op when already
    there). `static` values must be hashable; one compilation per function, static values,
    shapes and layout."""
    static, names, values, in_shardings = _call_parts(inputs, mesh, head_dim, static)
    key = (fn, mesh, names, tuple(sorted(static.items())), _signature(values),
           _hashable(in_shardings), _hashable(out_axes), head_dim)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _sharded_jit(fn, mesh, names, values, in_shardings, out_axes, head_dim, static)
        _COMPILED[key] = compiled
    return compiled(*put(values, in_shardings))


def _call_parts(inputs: Mapping[str, tuple[Any, Any]], mesh: Mesh, head_dim: int,
                static: Mapping[str, Any] | None) -> tuple[dict, tuple[str, ...], tuple, tuple]:
    """The static arguments, the array arguments' names and values, and their shardings."""
    values = tuple(v for v, _ in inputs.values())
    in_shardings = tuple(shardings(v, ax, mesh, head_dim) for v, ax in inputs.values())
    return dict(static or {}), tuple(inputs), values, in_shardings


def _sharded_jit(fn: Callable, mesh: Mesh, names: tuple[str, ...], values: tuple, in_shardings: tuple, out_axes: Any,
                 head_dim: int, static: Mapping[str, Any]) -> Callable:
    def run(*args: Any) -> Any:
        return fn(**dict(zip(names, args)), **static)

    out_shape = jax.eval_shape(run, *values)
    out_shardings = shardings(out_shape, out_axes, mesh, head_dim)
    return jax.jit(run, in_shardings=in_shardings, out_shardings=out_shardings)


def lower_sharded(
    fn: Callable,
    mesh: Mesh,
    inputs: Mapping[str, tuple[Any, Any]],
    out_axes: Any,
    *,
    head_dim: int = 1,
    static: Mapping[str, Any] | None = None,
) -> jax.stages.Lowered:
    """What `sharded_call` with these arguments compiles, lowered for abstract inputs
    (`jax.ShapeDtypeStruct`s, laid out by their axes): no array is created."""
    static, names, values, in_shardings = _call_parts(inputs, mesh, head_dim, static)
    abstract = jax.tree_util.tree_map(lambda v, s: jax.ShapeDtypeStruct(_shape(v), v.dtype, sharding=s),
                                      values, in_shardings)
    return _sharded_jit(fn, mesh, names, values, in_shardings, out_axes, head_dim, static).lower(*abstract)


# --- the mesh of a command -----------------------------------------------------------------
_ACTIVE: list[Mesh] = []


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None) -> Iterator[Mesh | None]:
    """Make `mesh` the one phases use when called without an explicit `mesh` argument."""
    if mesh is None:
        yield None
        return
    _ACTIVE.append(mesh)
    try:
        yield mesh
    finally:
        _ACTIVE.pop()


def resolve_mesh(mesh: Mesh | None) -> Mesh | None:
    """The explicit mesh, else the one set by `use_mesh`, else None (one device)."""
    if mesh is not None:
        return mesh
    return _ACTIVE[-1] if _ACTIVE else None



def mesh_from_flag(text: str | None) -> Mesh | None:
    """The mesh a command runs on: `--mesh` when given, every device of a multi-process run
    otherwise, else None (one device, no sharding)."""
    if text:
        return make_mesh(text)
    return make_mesh("auto") if jax.process_count() > 1 else None
