"""Matrix FLOPs of a compiled XLA executable, loops counted as often as they run.

`compiled.cost_analysis()["flops"]` counts the body of a `while` loop (a `lax.scan`,
`fori_loop` or `map`) once, whatever its trip count, and LAPACK custom calls (Cholesky,
triangular solves) not at all. Týr's local pruner and candidate scoring run almost all their
work inside such loops, so this module reads the optimized HLO text instead and counts, per
computation, the multiply-adds of `dot` (2 · output size · contracted size), `spotrf`
Cholesky factorizations (n³/3) and `strsm` triangular solves (n² per right-hand side),
multiplying a `while` body by its `known_trip_count`. A `conditional` contributes its cheapest
branch to `low` and its costliest to `high` (equal when the executable has none).
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple

SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")
COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s+\(.*\{\s*$")
TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


class Flops(NamedTuple):
    low: float
    high: float

    def __add__(self, other: "Flops") -> "Flops":  # type: ignore[override]
        return Flops(self.low + other.low, self.high + other.high)

    def scaled(self, factor: float) -> "Flops":
        return Flops(self.low * factor, self.high * factor)

    def at(self, fraction: float) -> float:
        """The count when a `fraction` of the conditionals take their costliest branch."""
        return self.low + fraction * (self.high - self.low)


ZERO = Flops(0.0, 0.0)


class Instruction(NamedTuple):
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attributes: str


def dims(shape: str) -> list[int]:
    """The dimensions of an array shape like `f32[2,32,160]{2,1,0}` ([] for a scalar)."""
    match = SHAPE.match(shape)
    if match is None:
        return []
    return [int(d) for d in match.group(1).split(",") if d]


def _closing(text: str, start: int) -> int:
    """The index just past the bracket that closes the one at `start`."""
    depth, pairs = 0, {"(": ")", "{": "}", "[": "]"}
    opening = text[start]
    for i in range(start, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == pairs[opening]:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def parse_instruction(line: str) -> Instruction | None:
    line = line.strip()
    if line.startswith("ROOT "):
        line = line[5:]
    if not line.startswith("%") or " = " not in line:
        return None
    name, rest = line[1:].split(" = ", 1)
    end = _closing(rest, 0) if rest.startswith("(") else rest.index(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    paren = rest.find("(")
    if paren < 0:
        return None
    opcode = rest[:paren]
    close = _closing(rest, paren)
    operands = re.findall(r"%([\w.\-]+)", rest[paren + 1:close - 1])
    return Instruction(name, shape, opcode, operands, rest[close:])


def computations(hlo: str) -> tuple[dict[str, list[Instruction]], str]:
    """Every computation's instructions by name, and the entry computation's name."""
    comps: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        head = COMPUTATION.match(line)
        if head:
            current = head.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif line.strip() == "}":
            current = None
        elif current is not None:
            instruction = parse_instruction(line)
            if instruction is not None:
                comps[current].append(instruction)
    return comps, entry


def _attribute(attributes: str, key: str) -> list[str]:
    match = re.search(key + r"=(\{[^}]*\}|%[\w.\-]+)", attributes)
    return re.findall(r"%([\w.\-]+)", match.group(1)) if match else []


def own_flops(ins: Instruction, shapes: dict[str, str]) -> float:
    """FLOPs of one instruction by itself (matrix products and LAPACK factorizations/solves)."""
    if ins.opcode == "dot":
        lhs = dims(shapes[ins.operands[0]])
        contracted = [int(d) for d in re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attributes).group(1).split(",") if d]
        return 2.0 * math.prod(dims(ins.shape)) * math.prod(lhs[c] for c in contracted)
    if ins.opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', ins.attributes)
        target = target.group(1) if target else ""
        if "potrf" in target:
            a = dims(shapes[ins.operands[0]])
            return math.prod(a[:-2]) * a[-1] ** 3 / 3.0
        if "trsm" in target:
            a, b = dims(shapes[ins.operands[0]]), dims(shapes[ins.operands[1]])
            return float(math.prod(b) * a[-1])
    return 0.0


def hlo_flops(hlo: str) -> Flops:
    """Matrix FLOPs of one run of the entry computation of optimized HLO text (see the module)."""
    comps, entry = computations(hlo)
    memo: dict[str, Flops] = {}

    def total(name: str) -> Flops:
        if name in memo:
            return memo[name]
        instructions = comps.get(name, [])
        shapes = {ins.name: ins.shape for ins in instructions}
        flops = ZERO
        for ins in instructions:
            own = own_flops(ins, shapes)
            flops = flops + Flops(own, own)
            if ins.opcode == "while":
                trips = TRIP_COUNT.search(ins.attributes)
                body = sum((total(c) for c in _attribute(ins.attributes, "body")), ZERO)
                flops = flops + body.scaled(int(trips.group(1)) if trips else 1)
            elif ins.opcode == "conditional":
                branches = [total(c) for c in _attribute(ins.attributes, "branch_computations")
                            + _attribute(ins.attributes, "true_computation")
                            + _attribute(ins.attributes, "false_computation")]
                if branches:
                    flops = flops + Flops(min(b.low for b in branches), max(b.high for b in branches))
            else:
                for callee in _attribute(ins.attributes, "calls"):
                    flops = flops + total(callee)
                if ins.opcode == "call":
                    for callee in _attribute(ins.attributes, "to_apply"):
                        flops = flops + total(callee)
        memo[name] = flops
        return flops

    return total(entry)


def cost_analysis_flops(compiled) -> float:
    """XLA's own count (`cost_analysis()["flops"]`: loop bodies once, custom calls not at all)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))
