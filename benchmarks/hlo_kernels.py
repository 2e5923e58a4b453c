"""Where a compiled JAX program's kernel time goes: its matmuls' FLOPs read from the
executable's HLO, and a jax.profiler trace's kernel events grouped by matmul shape.

No flags here, so tests and every benchmark script can import it (`core_scaling.py`).
"""
import collections
import gzip
import json
import math
import os
import re
import tempfile
import time
from typing import List, NamedTuple, Optional

# Instructions whose trace events span the kernels of their called computations.
CONTAINER_OPCODES = ("while", "call", "conditional", "async-start", "async-done")


def skip_shape(text):
  """The rest of an HLO instruction's text after its result shape (an array shape such
  as `f32[6150,64]{1,0}`, or a tuple in balanced parentheses)."""
  if not text.startswith("("):
    return text.split(" ", 1)[1] if " " in text else ""
  depth = 0
  for i, char in enumerate(text):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if depth == 0:
      return text[i + 1:]
  raise ValueError(f"unbalanced tuple shape in HLO: {text[:80]!r}")


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_ARRAY_SHAPE = re.compile(r"^[a-z]\w*\[([\d,]*)\]")
_OPCODE = re.compile(r"^\s*([a-z][\w\-]*)\((.*)$")


class Instruction(NamedTuple):
  """One HLO instruction of a parsed module."""
  opcode: str
  dims: Optional[List[int]]  # the result's dims; None for a tuple
  operands: List[str]  # operand instruction names
  attributes: str  # the text after the operands: contracting dims, called computations


def parse_hlo(hlo_text):
  """HLO module text -> ({instruction name: Instruction}, {computation name: [names of
  its instructions]}). Instruction names are unique within a module."""
  instructions, computations, current = {}, {}, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and " = " not in line:
      current = computations.setdefault(header.group(1), [])
      continue
    match = _INSTRUCTION.match(line)
    if not match or current is None:
      continue
    name, rest = match.groups()
    shape = _ARRAY_SHAPE.match(rest)
    dims = [int(d) for d in shape.group(1).split(",") if d] if shape else None
    op = _OPCODE.match(skip_shape(rest))
    if not op:
      continue
    operand_text, _, attributes = op.group(2).partition("), ")
    operands = re.findall(r"%([\w.\-]+)", operand_text)
    instructions[name] = Instruction(op.group(1), dims, operands, attributes)
    current.append(name)
  return instructions, computations


# Attributes through which an instruction calls computations.
CALL_ATTRIBUTES = ("calls", "body", "condition", "to_apply", "branch_computations")
_CALLED = re.compile(rf"({'|'.join(CALL_ATTRIBUTES)})=(\{{[^}}]*\}}|%[\w.\-]+)")


def _called(instruction, kinds=CALL_ATTRIBUTES):
  """The computations an instruction calls through the attributes named in `kinds` (a
  fusion's `calls=`, a while's `body=`, a conditional's `branch_computations={...}`)."""
  return [name for kind, target in _CALLED.findall(instruction.attributes) if kind in kinds
          for name in re.findall(r"%([\w.\-]+)", target)]


def thunk_names(instructions, computations):
  """Names of the instructions that run as kernels of their own (and so have trace
  events): those of the entry and of loop bodies and branches, not those inside a fusion
  or a reduction's `to_apply`."""
  inlined = {name for instruction in instructions.values()
             for name in _called(instruction, ("calls", "to_apply"))}
  return [name for computation, names in computations.items() if computation not in inlined
          for name in names]


def dot_flops(name, instructions, computations):
  """(FLOPs, 'out dims x contraction' of its first matmul) of instruction `name`: a dot's
  2 * prod(result dims) * prod(contracted dims), summed over a fusion's (or any called
  computation's) dots; (0, '') for an instruction without matmuls."""
  instruction = instructions[name]
  if instruction.opcode == "dot":
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instruction.attributes)
    lhs = instructions[instruction.operands[0]].dims
    contraction = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d)
    return 2 * math.prod(instruction.dims) * contraction, f"{instruction.dims} x {contraction}"
  total, label = 0, ""
  for computation in _called(instruction):
    for inner in computations.get(computation, ()):
      flops, inner_label = dot_flops(inner, instructions, computations)
      total += flops
      label = label or inner_label
  return total, label


def kernel_breakdown(hlo_text, events, calls):
  """Where `calls` calls of a compiled program spent their kernel time.

  hlo_text: the executable's HLO (`compiled.as_text()`); events: jax.profiler trace
  events ({'ph': 'X', 'name': instruction name, 'dur': microseconds}) of those calls.
  Returns per call: 'kernel_ms' (every kernel event), 'dot_ms' and 'dot_gflop' (kernels
  with matmuls), 'other_ms', and 'dots': [{'shape', 'kernels', 'ms', 'gflops'}] per
  matmul shape, slowest first.
  """
  instructions, computations = parse_hlo(hlo_text)
  kernels = {name for name in thunk_names(instructions, computations)
             if instructions[name].opcode not in CONTAINER_OPCODES}
  per_shape = collections.defaultdict(lambda: {"kernels": 0, "us": 0.0, "flops": 0})
  matmuls = {name: dot_flops(name, instructions, computations) for name in kernels}
  kernel_us = other_us = 0.0
  for event in events:
    if event.get("ph") != "X" or event.get("name") not in kernels:
      continue
    kernel_us += event["dur"]
    flops, label = matmuls[event["name"]]
    if not flops:
      other_us += event["dur"]
      continue
    entry = per_shape[label]
    entry["kernels"] += 1
    entry["us"] += event["dur"]
    entry["flops"] += flops
  dots = [{"shape": label, "kernels": e["kernels"] / calls, "ms": e["us"] / 1e3 / calls,
           "gflops": e["flops"] / e["us"] / 1e3} for label, e in per_shape.items()]
  dots.sort(key=lambda d: -d["ms"])
  dot_us = sum(e["us"] for e in per_shape.values())
  return {"kernel_ms": kernel_us / 1e3 / calls, "dot_ms": dot_us / 1e3 / calls,
          "dot_gflop": sum(e["flops"] for e in per_shape.values()) / 1e9 / calls,
          "other_ms": other_us / 1e3 / calls, "dots": dots}


def trace_events(run, calls):
  """(jax.profiler trace events of `calls` calls of run(), their wall seconds per call)."""
  import jax  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder)
    start = time.perf_counter()
    for _ in range(calls):
      run()
    seconds = (time.perf_counter() - start) / calls
    jax.profiler.stop_trace()
    paths = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
             if f.endswith(".trace.json.gz")]
    if len(paths) != 1:
      raise RuntimeError(f"expected one .trace.json.gz under the trace folder, got {paths}")
    with gzip.open(paths[0]) as f:
      return json.load(f)["traceEvents"], seconds
