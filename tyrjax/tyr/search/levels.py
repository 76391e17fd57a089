"""The level grid of Týr's supernet (ALGORITHMS.md §1.3-§1.5), independent of any model.

Each searchable layer (a block's attention, module type 0, or its MLP, module type 1) has
``n_levels`` (E = 9) sparsity levels. Level ``k`` of layer ``l`` removes

    removed[l, k] = centre[l] + (k - E // 2) * step[l]

groups (heads or neurons), so level ``E // 2`` (4) is the centre.

Levels outside ``[0, n_groups]``.  ALGORITHMS.md says the levels ``c + k·Δ`` are "clipped to
[0, 1]". Clipping would make two levels of a layer remove the same number of groups, and a
level switch that moves one layer onto a clipped level would no longer change the removed
parameter count by exactly one step, breaking the constant-total property the search relies
on. We therefore read the phrase as "levels outside the range do not exist": such levels are
marked *invalid* (``LevelGrid.valid``), ``removed_params`` rejects genomes that use them, and
the mutation never selects them. The valid levels of a layer form one contiguous range that
always contains the centre.

All parameter counts are exact Python integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

from tyrjax.errors import TyrjaxError

__all__ = [
    "ATTENTION",
    "MLP",
    "LevelGrid",
    "Centres",
    "make_grid",
    "recentre",
    "centre_genome",
    "check_genome",
    "removed_params",
    "sparsity",
    "initial_centres",
]

#: Module type of a block's attention layer.
ATTENTION = 0
#: Module type of a block's MLP layer.
MLP = 1


def _int_vector(name: str, value: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0 and n is not None:
        arr = np.full(n, arr)
    if arr.ndim != 1:
        raise TyrjaxError(f"{name} must be a 1-D sequence with one entry per layer; got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise TyrjaxError(f"{name} must hold integers; got {arr.tolist()!r}.")
    arr = arr.astype(np.int64)
    if n is not None and arr.shape[0] != n:
        raise TyrjaxError(f"{name} has {arr.shape[0]} entries but there are {n} layers; give one per layer.")
    return arr


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=np.int64, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class LevelGrid:
    """The per-layer level table of one supernet.

    Attributes (all ``(L,)`` int64, read-only):
      module_type: 0 for attention, 1 for MLP (any small non-negative int is accepted).
      group_params: parameters removed per removed group of that layer (caller's count).
      n_groups: groups (heads / neurons) in the layer.
      centre: groups removed at the centre level ``n_levels // 2``.
      step: groups per level step (> 0).
      n_levels: E, odd (default 9).
    """

    module_type: np.ndarray
    group_params: np.ndarray
    n_groups: np.ndarray
    centre: np.ndarray
    step: np.ndarray
    n_levels: int = 9

    def __post_init__(self) -> None:
        mt = _int_vector("module_type", self.module_type)
        n = mt.shape[0]
        if n == 0:
            raise TyrjaxError("A LevelGrid needs at least one layer; got an empty module_type.")
        fields = {"module_type": mt}
        for name in ("group_params", "n_groups", "centre", "step"):
            fields[name] = _int_vector(name, getattr(self, name), n)
        if not isinstance(self.n_levels, (int, np.integer)) or isinstance(self.n_levels, bool):
            raise TyrjaxError(f"n_levels must be an odd positive int; got {self.n_levels!r}.")
        if self.n_levels < 1 or self.n_levels % 2 == 0:
            raise TyrjaxError(f"n_levels must be an odd positive int (the centre is the middle level); got {self.n_levels}.")
        checks = [
            ("module_type", fields["module_type"] >= 0, "must be >= 0"),
            ("n_groups", fields["n_groups"] >= 1, "must be >= 1"),
            ("group_params", fields["group_params"] >= 1, "must be >= 1 (parameters removed per group)"),
            ("step", fields["step"] >= 1, "must be >= 1 group per level"),
            ("centre", (fields["centre"] >= 0) & (fields["centre"] <= fields["n_groups"]), "must lie in [0, n_groups]"),
        ]
        for name, ok, what in checks:
            if not np.all(ok):
                bad = int(np.flatnonzero(~ok)[0])
                raise TyrjaxError(
                    f"LevelGrid.{name} {what}; layer {bad} has {name}={int(fields[name][bad])}"
                    + (f" with n_groups={int(fields['n_groups'][bad])}" if name == "centre" else "")
                    + ". Fix the value passed for that layer."
                )
        for name, arr in fields.items():
            object.__setattr__(self, name, _readonly(arr))
        object.__setattr__(self, "n_levels", int(self.n_levels))
        offsets = np.arange(self.n_levels, dtype=np.int64) - self.n_levels // 2
        removed = self.centre[:, None] + offsets[None, :] * self.step[:, None]
        valid = (removed >= 0) & (removed <= self.n_groups[:, None])
        removed.setflags(write=False)
        valid.setflags(write=False)
        object.__setattr__(self, "_removed", removed)
        object.__setattr__(self, "_valid", valid)

    # ------------------------------------------------------------------ derived
    @property
    def n_layers(self) -> int:
        return int(self.module_type.shape[0])

    @property
    def centre_level(self) -> int:
        """Index of the centre level (4 for E = 9)."""
        return self.n_levels // 2

    @property
    def removed(self) -> np.ndarray:
        """``(L, E)`` groups removed at each level; entries at invalid levels are out of range."""
        return self._removed  # type: ignore[attr-defined]

    @property
    def valid(self) -> np.ndarray:
        """``(L, E)`` bool: the level exists (removes between 0 and n_groups groups)."""
        return self._valid  # type: ignore[attr-defined]

    @property
    def step_params(self) -> np.ndarray:
        """``(L,)`` parameters removed per level step (``step * group_params``)."""
        return self.step * self.group_params

    @property
    def removed_params_table(self) -> np.ndarray:
        """``(L, E)`` parameters removed at each level (meaningless at invalid levels)."""
        return self.removed * self.group_params[:, None]

    @property
    def level_sparsity(self) -> np.ndarray:
        """``(L, E)`` per-layer sparsity ``removed / n_groups`` (invalid levels are outside [0, 1])."""
        return self.removed / self.n_groups[:, None]

    def same_as(self, other: "LevelGrid") -> bool:
        return isinstance(other, LevelGrid) and self.to_dict() == other.to_dict()

    # ------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        """A JSON-serialisable description (plain lists of ints)."""
        return {
            "module_type": self.module_type.tolist(),
            "group_params": self.group_params.tolist(),
            "n_groups": self.n_groups.tolist(),
            "centre": self.centre.tolist(),
            "step": self.step.tolist(),
            "n_levels": self.n_levels,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LevelGrid":
        try:
            return cls(
                module_type=d["module_type"],
                group_params=d["group_params"],
                n_groups=d["n_groups"],
                centre=d["centre"],
                step=d["step"],
                n_levels=int(d.get("n_levels", 9)),
            )
        except (KeyError, TypeError) as exc:
            raise TyrjaxError(f"Not a LevelGrid description ({exc!r}); expected the dict written by LevelGrid.to_dict().") from exc


# ---------------------------------------------------------------------- genomes
def centre_genome(grid: LevelGrid) -> np.ndarray:
    """The genome with every layer at the centre level."""
    return np.full(grid.n_layers, grid.centre_level, dtype=np.int64)


def check_genome(grid: LevelGrid, genome: Any, name: str = "genome") -> np.ndarray:
    """Return ``genome`` as an int64 ``(L,)`` array, raising TyrjaxError if it is not valid for ``grid``."""
    g = np.asarray(genome)
    if g.shape != (grid.n_layers,):
        raise TyrjaxError(f"{name} must have shape ({grid.n_layers},) (one level per layer); got {g.shape}.")
    if g.size and not np.issubdtype(g.dtype, np.integer):
        raise TyrjaxError(f"{name} must hold integer level indices; got dtype {g.dtype}.")
    g = g.astype(np.int64)
    out = (g < 0) | (g >= grid.n_levels)
    if np.any(out):
        l = int(np.flatnonzero(out)[0])
        raise TyrjaxError(f"{name}[{l}] = {int(g[l])} is not a level index in [0, {grid.n_levels - 1}].")
    ok = grid.valid[np.arange(grid.n_layers), g]
    if not np.all(ok):
        l = int(np.flatnonzero(~ok)[0])
        raise TyrjaxError(
            f"{name}[{l}] = {int(g[l])} is an invalid level: it would remove {int(grid.removed[l, g[l]])} of "
            f"{int(grid.n_groups[l])} groups. Use a level whose removal lies in [0, n_groups] (see LevelGrid.valid)."
        )
    return g


def removed_params(grid: LevelGrid, genome: Any) -> int:
    """Exact number of parameters the genome removes (Σ_l removed[l, genome[l]] · group_params[l])."""
    g = check_genome(grid, genome)
    rem = grid.removed[np.arange(grid.n_layers), g]
    return int(sum(int(r) * int(p) for r, p in zip(rem.tolist(), grid.group_params.tolist())))


def sparsity(grid: LevelGrid, genome: Any, total_params: int) -> float:
    """Removed parameters of the genome divided by ``total_params`` (the prunable total)."""
    if not isinstance(total_params, (int, np.integer)) or total_params <= 0:
        raise TyrjaxError(f"total_params must be a positive int (attention + MLP parameters); got {total_params!r}.")
    return removed_params(grid, genome) / int(total_params)


# ------------------------------------------------------------------ grid making
def _is_plain_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _float_vector(name: str, value: Any, n: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise TyrjaxError(f"{name} must have one entry per layer ({n}); got shape {arr.shape}.")
    return arr


def make_grid(
    n_groups: Sequence[int],
    group_params: Sequence[int],
    module_type: Sequence[int],
    centre_sparsity: Sequence[float] | float,
    interval: float,
    group_multiple: Sequence[int] | int,
    *,
    n_levels: int = 9,
) -> LevelGrid:
    """Build a grid of ``n_levels`` levels per layer spaced ``interval`` apart around the centres.

    ``step[l]`` is the positive multiple of ``group_multiple[l]`` closest to
    ``interval * n_groups[l]`` (ties round up). ``centre[l]`` is the multiple of
    ``group_multiple[l]`` closest to ``centre_sparsity[l] * n_groups[l]`` (ties up, capped at
    the largest multiple not above ``n_groups``). Use ``group_multiple = 1`` for attention
    (whole heads) and 32 for MLP neurons (smaller multiples are allowed but coarse multiples
    keep the exported matrices hardware-friendly).

    Raises TyrjaxError when the step would round to 0 groups (the layer is too small for
    this interval at that granularity).
    """
    nG = _int_vector("n_groups", n_groups)
    L = nG.shape[0]
    if L == 0:
        raise TyrjaxError("make_grid needs at least one layer; n_groups is empty.")
    gp = _int_vector("group_params", group_params, L)
    mt = _int_vector("module_type", module_type, L)
    mult = _int_vector("group_multiple", group_multiple, L)
    cs = _float_vector("centre_sparsity", centre_sparsity, L)
    try:
        interval = float(interval)
    except (TypeError, ValueError) as exc:
        raise TyrjaxError(f"interval must be a number in (0, 1], e.g. 0.125; got {interval!r}.") from exc
    if not (math.isfinite(interval) and 0.0 < interval <= 1.0):
        raise TyrjaxError(f"interval must be in (0, 1] (a fraction of each layer's groups, e.g. 0.125); got {interval}.")
    if np.any(nG < 1):
        l = int(np.flatnonzero(nG < 1)[0])
        raise TyrjaxError(f"n_groups[{l}] = {int(nG[l])}; every layer needs at least one group.")
    if np.any(mult < 1):
        l = int(np.flatnonzero(mult < 1)[0])
        raise TyrjaxError(f"group_multiple[{l}] = {int(mult[l])}; it must be a positive number of groups.")
    if np.any(~np.isfinite(cs) | (cs < 0) | (cs > 1)):
        l = int(np.flatnonzero(~np.isfinite(cs) | (cs < 0) | (cs > 1))[0])
        raise TyrjaxError(f"centre_sparsity[{l}] = {cs[l]}; it must be a fraction in [0, 1].")
    steps, centres = [], []
    for l in range(L):
        n, m = int(nG[l]), int(mult[l])
        if m > n:
            raise TyrjaxError(
                f"group_multiple[{l}] = {m} exceeds the layer's {n} groups (layer {l}, module type {int(mt[l])}); "
                "use a smaller group_multiple for this model."
            )
        want = interval * n
        k = _round_half_up(want / m)
        if k < 1:
            raise TyrjaxError(
                f"Layer {l} (module type {int(mt[l])}) has {n} groups: interval {interval} gives {want:.3g} groups "
                f"per level, which rounds to 0 multiples of group_multiple={m}. The model is too small for this "
                f"granularity; use interval >= {m / (2 * n):.4g} or a smaller group_multiple."
            )
        steps.append(k * m)
        c = _round_half_up(cs[l] * n / m) * m
        c = min(c, (n // m) * m)
        centres.append(c)
    return LevelGrid(module_type=mt, group_params=gp, n_groups=nG, centre=centres, step=steps, n_levels=n_levels)


def recentre(grid: LevelGrid, genome: Any, interval: float, group_multiple: Sequence[int] | int) -> LevelGrid:
    """The next coarse-to-fine grid (§1.5): centred exactly on ``genome``'s removals, new ``interval``.

    The new centre of each layer is the number of groups ``genome`` removes there (no float
    round trip), so ``removed_params`` of the new centre genome equals that of ``genome``.
    """
    g = check_genome(grid, genome)
    mult = _int_vector("group_multiple", group_multiple, grid.n_layers)
    rem = grid.removed[np.arange(grid.n_layers), g]
    if np.any(rem % mult != 0):
        l = int(np.flatnonzero(rem % mult != 0)[0])
        raise TyrjaxError(
            f"Layer {l} removes {int(rem[l])} groups, not a multiple of group_multiple={int(mult[l])}; "
            "use the same group_multiple as the previous grid."
        )
    new = make_grid(grid.n_groups, grid.group_params, grid.module_type, 0.0, interval, mult, n_levels=grid.n_levels)
    return LevelGrid(
        module_type=new.module_type,
        group_params=new.group_params,
        n_groups=new.n_groups,
        centre=rem,
        step=new.step,
        n_levels=new.n_levels,
    )


# --------------------------------------------------------------- initial centres
class Centres(NamedTuple):
    """Result of :func:`initial_centres`.

    groups: ``(L,)`` int groups removed per layer; sparsity: ``groups / n_groups`` (pass it
    to ``make_grid`` as ``centre_sparsity``; it round-trips exactly); removed_params: the
    exact total; achieved: ``removed_params / total_params``; target: the requested S.
    """

    groups: np.ndarray
    sparsity: np.ndarray
    removed_params: int
    achieved: float
    target: float


def _spread(n_members: int, extra: int) -> np.ndarray:
    """Which of ``n_members`` identical layers get one extra granule: ``extra`` evenly spread ones."""
    mask = np.zeros(n_members, dtype=bool)
    if extra:
        mask[np.floor((np.arange(extra) + 0.5) * n_members / extra).astype(np.int64)] = True
    return mask


def initial_centres(
    target_sparsity: float,
    n_groups: Sequence[int],
    group_params: Sequence[int],
    group_multiple: Sequence[int] | int,
    *,
    total_params: int | None = None,
    module_type: Sequence[int] | None = None,
) -> Centres:
    """Per-layer centres, uniform per module type, whose total removal is as close to the target as possible.

    The target is ``T = target_sparsity * total_params`` removed parameters; ``total_params``
    defaults to the removable total ``Σ n_groups·group_params`` (pass the full attention + MLP
    count when some parameters, e.g. GQA key/value projections, are not removed with the
    groups). The uniform fraction of the removable parameters is ``f = T / removable``.

    Layers are grouped into classes of identical layers (same module type, n_groups,
    group_params, group_multiple; normally one class per module type). A class of N layers
    removes Q granules (a granule = ``group_multiple`` groups) spread as evenly as possible:
    every layer gets ``Q // N`` granules and ``Q % N`` evenly spaced layers one more, so the
    layers of a class differ by at most one granule. The class totals Q are chosen so that the
    total lies within half the smallest granule (``min group_multiple·group_params``) of ``T``
    and, among such choices, the largest deviation of a class's sparsity from ``f`` is
    smallest (ties: the smaller error). With fine granularity (real models) every class sits
    within about one granule of ``f``; in toy models the classes may differ more.

    Raises TyrjaxError when no choice lies within half the smallest granule of ``T`` (e.g. the
    target asks for more than the layers can remove).
    """
    nG = _int_vector("n_groups", n_groups)
    L = nG.shape[0]
    if L == 0:
        raise TyrjaxError("initial_centres needs at least one layer; n_groups is empty.")
    gp = _int_vector("group_params", group_params, L)
    mult = _int_vector("group_multiple", group_multiple, L)
    mt = np.zeros(L, dtype=np.int64) if module_type is None else _int_vector("module_type", module_type, L)
    if np.any(nG < 1) or np.any(gp < 1) or np.any(mult < 1) or np.any(mult > nG):
        raise TyrjaxError(
            "initial_centres: n_groups, group_params and group_multiple must be positive with "
            f"group_multiple <= n_groups; got n_groups={nG.tolist()}, group_params={gp.tolist()}, "
            f"group_multiple={mult.tolist()}."
        )
    removable = int(sum(int(n) * int(p) for n, p in zip(nG.tolist(), gp.tolist())))
    if total_params is None:
        total = removable
    else:
        if not _is_plain_int(total_params) or total_params < removable:
            raise TyrjaxError(
                f"total_params must be an int >= the removable parameter count {removable}; got {total_params!r}."
            )
        total = int(total_params)
    try:
        S = float(target_sparsity)
    except (TypeError, ValueError) as exc:
        raise TyrjaxError(f"target_sparsity must be a fraction in [0, 1]; got {target_sparsity!r}.") from exc
    if not (math.isfinite(S) and 0.0 <= S <= 1.0):
        raise TyrjaxError(f"target_sparsity must be a fraction in [0, 1]; got {target_sparsity!r}.")
    target = S * total
    granule = mult * gp
    half = float(granule.min()) / 2.0
    tol = half * (1 + 1e-9)
    if target > removable + tol:
        raise TyrjaxError(
            f"target_sparsity {S} of {total} parameters asks to remove {target:.0f}, but the layers can remove at "
            f"most {removable} (at most {removable / total:.4f} of total_params); lower the target."
        )
    f = min(target / removable, 1.0)

    # Classes of identical layers; the finest granule class absorbs the remainder.
    keys: dict = {}
    for l in range(L):
        keys.setdefault((int(mt[l]), int(nG[l]), int(gp[l]), int(mult[l])), []).append(l)
    classes = [
        (np.asarray(m, dtype=np.int64), k[3] * k[2], len(m) * (k[1] // k[3])) for k, m in keys.items()
    ]  # (members, granule params, max granules of the class)
    classes.sort(key=lambda c: (-c[1], c[2]))  # coarsest first, finest last
    coarse, fine = classes[:-1], classes[-1]
    if coarse:
        budget = 200_000
        radius = max(1, int(budget ** (1.0 / len(coarse)) // 2))
        axes = []
        for _m, _g, qmax in coarse:
            centre = int(round(f * qmax))
            axes.append(np.arange(max(0, centre - radius), min(qmax, centre + radius) + 1, dtype=np.int64))
        combos = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
    else:
        combos = np.zeros((1, 0), dtype=np.int64)
    g_coarse = np.array([c[1] for c in coarse], dtype=np.float64)
    qmax_coarse = np.array([c[2] for c in coarse], dtype=np.float64)
    rest = target - combos @ g_coarse if coarse else np.full(1, target)
    _fm, g_fine, qmax_fine = fine
    q_fine = np.clip(np.round(rest / g_fine), 0, qmax_fine).astype(np.int64)
    err = np.abs(rest - q_fine * float(g_fine))
    dev = np.abs(q_fine / qmax_fine - f)
    if coarse:
        dev = np.maximum(dev, np.abs(combos / qmax_coarse - f).max(axis=1))
    ok = err <= tol
    if not np.any(ok):
        j = int(np.argmin(err))
        closest = target - float(rest[j]) + float(q_fine[j] * g_fine)
        raise TyrjaxError(
            f"target_sparsity {S} (remove {target:.0f} of {total} parameters) cannot be reached within half a "
            f"granule ({half:.0f} parameters) by these layers; the closest is {closest:.0f} "
            f"({closest / total:.6f}). Choose a reachable target or a finer group_multiple."
        )
    cand = np.flatnonzero(ok)
    j = int(cand[np.lexsort((err[cand], np.round(dev[cand], 12)))[0]])
    q_classes = list(combos[j].tolist()) + [int(q_fine[j])]
    groups = np.zeros(L, dtype=np.int64)
    for (members, _g, _qmax), q in zip(classes, q_classes):
        per = q // len(members)
        extra = _spread(len(members), q - per * len(members))
        m = int(mult[members[0]])
        groups[members] = (per + extra.astype(np.int64)) * m
    cur = int(sum(int(a) * int(b) for a, b in zip(groups.tolist(), gp.tolist())))
    return Centres(
        groups=groups,
        sparsity=groups / nG,
        removed_params=cur,
        achieved=cur / total,
        target=S,
    )
