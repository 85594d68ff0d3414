"""Reading optimized HLO text: array bytes, collectives and their traffic, and where a program's memory
traffic and FLOPs come from (`term_breakdown`)."""
from __future__ import annotations

import math
import re
from typing import Iterator

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64|c64|c128)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+(" + "|".join(COLLECTIVE_KINDS) +
                          r")(-start|-done)?\(", re.M)


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in an HLO result type, e.g. "(f32[8,4]{1,0}, bf16[2])" -> 132."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    total += _BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _group_size(line: str, num_devices: int) -> int:
  """Devices per replica group of a collective's HLO line (iota `[G,S]<=[N]` or explicit `{{..},..}`)."""
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
  if iota:
    return int(iota.group(2))
  explicit = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
  if explicit and explicit.group(1):
    return len(explicit.group(1).split(","))
  pairs = re.search(r"source_target_pairs=\{(.*?)\}\s*[,}]", line)
  if pairs:
    return 2
  return num_devices


def collective_traffic(kind: str, result_bytes: int, group: int) -> float:
  """Bytes one device sends for a collective whose result is `result_bytes` (ring algorithms).

  all-reduce 2(n-1)/n of the array; all-gather (n-1)/n of the gathered result; reduce-scatter (n-1)
  times its shard result; all-to-all (n-1)/n; collective-permute the whole result.
  """
  n = max(group, 1)
  if n == 1:
    return 0.0
  factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n, "reduce-scatter": float(n - 1),
            "all-to-all": (n - 1) / n, "collective-permute": 1.0}[kind]
  return factor * result_bytes


def parse_collectives(hlo_text: str, num_devices: int) -> list[dict]:
  """Collectives of an optimized HLO module: [{kind, count, bytes, traffic_bytes}] per kind.

  `bytes` sums the result arrays; `traffic_bytes` what one device sends (see `collective_traffic`).
  Asynchronous pairs count once (at their `-done`, whose result is the output). Collectives inside a
  while loop are counted once (as XLA's cost analysis counts loop bodies).
  """
  out: dict[str, dict] = {}
  lines = hlo_text.splitlines()
  for line in lines:
    match = _INSTRUCTION.match(line)
    if not match or match.group(3) == "-start":
      continue
    result, kind = match.group(1), match.group(2)
    size = shape_bytes(result)
    group = _group_size(line, num_devices)
    if match.group(3) == "-done":
      start = re.search(r"\(\s*%?([\w.\-]+)", line[match.end() - 1:])
      start_line = next((l for l in lines if start and re.match(rf"^\s*(?:ROOT\s+)?%?{re.escape(start.group(1))}\s*=",
                                                                  l)), "")
      group = _group_size(start_line, num_devices) if start_line else group
    entry = out.setdefault(kind, {"kind": kind, "count": 0, "bytes": 0, "traffic_bytes": 0.0})
    entry["count"] += 1
    entry["bytes"] += size
    entry["traffic_bytes"] += collective_traffic(kind, size, group)
  return sorted(out.values(), key=lambda e: -e["bytes"])


def count_while_loops(hlo_text: str) -> int:
  return len(re.findall(r"\bwhile\(", hlo_text))


# ------------------------------------------------------------------------------------------ breakdown

# The parts of a train step a change can move, matched in order against each instruction's op_name (the
# flax module path and named scopes); collectives are matched by opcode.
TERMS = ("attention", "feed_forward", "output_layer_and_loss", "embedding", "norms_dropout_residuals",
         "optimizer_update", "collectives", "other")
_TERM_PATTERNS = (("optimizer_update", ("optimizer_update",)),
                  ("output_layer_and_loss", ("_logits", "cross_entropy")),
                  ("attention", ("attention",)),
                  ("feed_forward", ("/mlp",)),
                  ("embedding", ("_embed",)),
                  ("norms_dropout_residuals", ("encoder", "decoder")))
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_ASSIGNMENT = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
# Instructions that move no data of their own (their callees are counted where they run).
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "call", "conditional",
         "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency"}
_FREE_CUSTOM_CALLS = ("AllocateBuffer", "ConcatBitcast")


def _balanced(text: str, start: int) -> int:
  """Index just past the bracket group opening at text[start] ("(" or "{")."""
  pairs = {"(": ")", "{": "}", "[": "]"}
  depth, i = 0, start
  closing = pairs[text[start]]
  while i < len(text):
    ch = text[i]
    if ch == text[start]:
      depth += 1
    elif ch == closing:
      depth -= 1
      if depth == 0:
        return i + 1
    i += 1
  return len(text)


def _instruction(line: str) -> dict | None:
  """{name, type, opcode, operands, attrs} of one HLO instruction line, or None."""
  match = _ASSIGNMENT.match(line)
  if not match:
    return None
  rest = line[match.end():]
  if rest.startswith("("):
    end = _balanced(rest, 0)
  else:
    end = rest.find(" ")
  type_text, rest = rest[:end], rest[end:].lstrip()
  opcode = re.match(r"([\w\-]+)\(", rest)
  if not opcode:
    return None
  close = _balanced(rest, opcode.end() - 1)
  return {"name": match.group(1), "type": type_text, "opcode": opcode.group(1),
          "operands": _operand_names(rest[opcode.end():close - 1]), "attrs": rest[close:]}


def _operand_names(text: str) -> list[str]:
  """Operand names of an instruction's argument list, with or without their shapes and "%" prefixes."""
  names = []
  for part in re.split(r",\s*(?![^{}\[\]()]*[}\])])", text):
    match = re.search(r"%?([A-Za-z_][\w.\-]*)\s*$", part.strip())
    if match:
      names.append(match.group(1))
  return names


def parse_module(hlo_text: str) -> tuple[dict[str, list[dict]], str]:
  """Computations of an HLO module -> ({name: [instructions]}, entry computation's name)."""
  computations: dict[str, list[dict]] = {}
  entry, current = "", None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and "=" not in line.split("(")[0]:
      current = header.group(2)
      computations[current] = []
      if header.group(1):
        entry = current
      continue
    if current is not None:
      instruction = _instruction(line)
      if instruction:
        computations[current].append(instruction)
  return computations, entry


def _called(attrs: str, key: str) -> list[str]:
  match = re.search(key + r"=\{?([%\w.\-, ]+)\}?", attrs)
  return re.findall(r"%?([\w.\-]+)", match.group(1)) if match else []


def _dims(type_text: str) -> list[int]:
  match = _SHAPE.search(type_text)
  return [int(d) for d in match.group(2).split(",") if d] if match else []


def _op_name(instruction: dict) -> str:
  match = re.search(r'op_name="([^"]*)"', instruction["attrs"])
  return match.group(1) if match else ""


def term_of(instruction: dict, instructions: dict | None = None, depth: int = 4) -> str:
  """The breakdown term of one top-level instruction (see TERMS). An instruction the compiler added without
  an op_name (an asynchronous copy or slice of an activation, a layout copy) takes the term of the first
  operand, up to `depth` producers back, that has one (`instructions`: {name: instruction})."""
  if instruction["opcode"].replace("-start", "").replace("-done", "") in COLLECTIVE_KINDS:
    return "collectives"
  path = _op_name(instruction)
  if not path and instructions and depth:
    for operand in instruction["operands"]:
      producer = instructions.get(operand)
      if producer is not None:
        term = term_of(producer, instructions, depth - 1)
        if term != "other" or _op_name(producer):
          return term
  for term, needles in _TERM_PATTERNS:
    if any(needle in path for needle in needles):
      return term
  return "other"


def _custom_cost(attrs: str) -> tuple[float, float] | None:
  match = re.search(r'cost_estimate"?\s*:\s*\{([^}]*)\}', attrs)
  if not match:
    return None
  fields = dict(re.findall(r'"(\w+)"\s*:\s*"?([0-9.eE+]+)"?', match.group(1)))
  return float(fields.get("flops", 0.0)), float(fields.get("bytes_accessed", 0.0))


def _top_level(computations: dict, entry: str, repeat: float) -> Iterator[tuple[dict, float]]:
  """(instruction, times it runs) for every instruction outside fusions: the entry computation, while
  bodies and conditions (x `repeat` for the outermost loops, whose trip count the caller knows; inner
  loops once, as XLA's cost analysis counts them), called computations and conditional branches."""
  stack = [(entry, 1.0, 0)]
  while stack:
    name, times, depth = stack.pop()
    for instruction in computations.get(name, []):
      yield instruction, times
      attrs = instruction["attrs"]
      if instruction["opcode"] == "while":
        loop_times = times * (repeat if depth == 0 else 1.0)
        stack += [(c, loop_times, depth + 1) for c in _called(attrs, "body") + _called(attrs, "condition")]
      elif instruction["opcode"] in ("call", "conditional", "async-start"):
        callees = _called(attrs, "to_apply") + _called(attrs, "branch_computations") + _called(attrs, "calls")
        stack += [(c, times, depth) for c in callees]


def _dot_flops(instruction: dict, types: dict[str, str]) -> float:
  """2 x output elements x contracted size of a `dot` (unoptimized HLO, where every matmul is one)."""
  lhs = _dims(types.get(instruction["operands"][0], "")) if instruction["operands"] else []
  contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instruction["attrs"])
  size = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d) if contracting and lhs else 1
  return 2.0 * math.prod(_dims(instruction["type"])) * size


def term_breakdown(hlo_text: str, repeat: float = 1.0, unoptimized_hlo: str | None = None,
                   num_devices: int = 1, largest: int = 3) -> dict[str, dict]:
  """{term: {"bytes": HBM bytes, "flops": matmul FLOPs, "largest": [its `largest` instructions by bytes]}}
  of one program, per device.

  Bytes come from the optimized module `hlo_text`: each top-level instruction's operands and result (a
  fusion reads its inputs and writes its outputs once, as XLA's cost analysis counts); a Pallas kernel
  counts its own cost estimate. FLOPs come from the dots of `unoptimized_hlo` (before fusion and
  partitioning, where each matmul is one `dot`), divided by `num_devices`, plus the kernels' estimates
  (per device already). `repeat`: the trip count of the outermost while loops (micro-batches, decoding
  steps), which both modules run `repeat` times.
  """
  out = {term: {"bytes": 0.0, "flops": 0.0} for term in TERMS}
  sizes: dict[str, list] = {term: [] for term in TERMS}
  computations, entry = parse_module(hlo_text)
  by_name = {i["name"]: i for instructions in computations.values() for i in instructions}
  types = {name: i["type"] for name, i in by_name.items()}
  for instruction, times in _top_level(computations, entry, repeat):
    opcode = instruction["opcode"]
    if opcode in _FREE or opcode.endswith("-start"):
      continue
    if opcode == "custom-call":
      if any(target in instruction["attrs"] for target in _FREE_CUSTOM_CALLS):
        continue
      cost = _custom_cost(instruction["attrs"])
      if cost is not None:
        out[term_of(instruction, by_name)]["bytes"] += cost[1] * times
        continue
    size = shape_bytes(instruction["type"]) + sum(shape_bytes(types.get(o, "")) for o in instruction["operands"])
    term = term_of(instruction, by_name)
    out[term]["bytes"] += size * times
    sizes[term].append((size * times, instruction))
  for term, entries in sizes.items():
    entries.sort(key=lambda e: -e[0])
    out[term]["largest"] = [{"name": i["name"], "opcode": i["opcode"], "bytes": b, "op_name": _op_name(i)}
                            for b, i in entries[:largest]]
  if unoptimized_hlo:
    computations, entry = parse_module(unoptimized_hlo)
    types = {i["name"]: i["type"] for instructions in computations.values() for i in instructions}
    runs = _times(computations, entry, repeat)
    for name, instructions in computations.items():
      for instruction in instructions:
        if instruction["opcode"] == "dot":
          out[term_of(instruction)]["flops"] += _dot_flops(instruction, types) * runs.get(name, 1.0) / num_devices
        elif instruction["opcode"] == "custom-call":
          cost = _custom_cost(instruction["attrs"])
          if cost is not None:
            out[term_of(instruction)]["flops"] += cost[0] * runs.get(name, 1.0)
  return out


def _times(computations: dict, entry: str, repeat: float) -> dict[str, float]:
  """{computation: times it runs} over while bodies (outermost x `repeat`), calls and branches."""
  times: dict[str, float] = {entry: 1.0}
  stack = [(entry, 1.0, 0)]
  while stack:
    name, count, depth = stack.pop()
    for instruction in computations.get(name, []):
      attrs = instruction["attrs"]
      if instruction["opcode"] == "while":
        callees, inner, next_depth = (_called(attrs, "body") + _called(attrs, "condition"),
                                      count * (repeat if depth == 0 else 1.0), depth + 1)
      else:
        callees, inner, next_depth = (_called(attrs, "to_apply") + _called(attrs, "branch_computations")
                                      + _called(attrs, "calls"), count, depth)
      for callee in callees:
        if callee not in times:
          times[callee] = inner
          stack.append((callee, inner, next_depth))
  return times


