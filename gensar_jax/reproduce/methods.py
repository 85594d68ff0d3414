"""The methods `gensar reproduce` compares (GenSAR, its variants, the ablations, the identifier lengths and
the classic baselines), the suites that group them, and the `reproduce` config section."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

from gensar_jax.config import field_parent, section_with_defaults
from gensar_jax.config_schema import Field, Rule, Section, one_of, satisfies, whole_at_least
from gensar_jax.eval.metrics import TASKS

SUITES = ("main", "ablations", "all")
# Config sections every method must share: same data, embeddings, baselines and evaluation protocol.
SHARED_SECTIONS = ("seed", "data", "embed", "baselines", "eval")


def _level_pairs() -> Rule:
  pair = lambda p: isinstance(p, tuple) and len(p) == 2 and whole_at_least(0)(p[0]) and whole_at_least(1)(p[1])
  return satisfies(lambda v: isinstance(v, tuple) and bool(v) and all(pair(p) for p in v),
                   "a non-empty tuple of (shared levels >= 0, specific levels >= 1) pairs of whole numbers")


# The `reproduce` section (`gensar reproduce`; read by no stage).
REPRODUCE_SCHEMA = Section(dict(
    suite=Field("main", one_of(*SUITES)),   # the CLI's --suite overrides it
    identifier_lengths=Field(((1, 1), (2, 2), (3, 3)), _level_pairs()),   # (L_m, L_n) of the identifier-length table
))


def reproduce_config() -> ml_collections.ConfigDict:
  """Defaults of the `reproduce` section."""
  return REPRODUCE_SCHEMA.defaults()


def reproduce_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.reproduce` over `reproduce_config()` (unknown fields are an error)."""
  return section_with_defaults(config, "reproduce", reproduce_config())


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the tables.

  kind: "generative" (the pipeline under `overrides`, dotted config key -> value) or "baseline"
  (`baseline` names an `evaluate_baselines` method). group: "main", "ablation" or "identifier_length".
  tasks: the tasks the method is reported on (the others show "–").
  note: what the row measures, printed under its table (empty = the name says it).
  """
  name: str
  slug: str
  kind: str
  group: str
  tasks: tuple[str, ...] = TASKS
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  baseline: str | None = None
  note: str = ""


GENSAR = Method("GenSAR", "gensar", "generative", "main")

MAIN_METHODS = (
    GENSAR,
    Method("Semantic IDs (TIGER-style)", "semantic-ids", "generative", "main",
           overrides={"identifiers.mode": "semantic"}),
    Method("Collaborative IDs", "collab-ids", "generative", "main", overrides={"identifiers.mode": "collab"}),
    Method("GenSAR rec-only", "gensar-rec-only", "generative", "main", tasks=("rec",),
           overrides={"tasks.sizes.nsip": 0, "tasks.sizes.nsqp": 0, "tasks.sizes.adhoc": 0,
                      "train.selection_tasks": ("rec",)}),
    Method("GenSAR search-only", "gensar-search-only", "generative", "main", tasks=("search",),
           overrides={"tasks.sizes.nrip": 0, "train.selection_tasks": ("search",)}),
    Method("Popularity", "popularity", "baseline", "main", baseline="popularity"),
    Method("BM25", "bm25", "baseline", "main", tasks=("search",), baseline="bm25"),
    Method("Dense retrieval", "dense", "baseline", "main", tasks=("search",), baseline="dense"),
    Method("SASRec", "sasrec", "baseline", "main", tasks=("rec",), baseline="sasrec"),
    Method("SASRec (BCE, sampled negatives)", "sasrec-bce", "baseline", "main", tasks=("rec",),
           baseline="sasrec_bce",
           note="SASRec trained with its original binary cross-entropy over the positive and "
                "`embed.sasrec.bce_negatives` sampled unseen items (as the authors' line of work trains its "
                "recommenders), the SASRec row's other settings unchanged; the SASRec row trains with a softmax over "
                "the whole catalogue"),
)

ABLATION_METHODS = (
    Method("w/o query generation", "wo-query-generation", "generative", "ablation",
           overrides={"tasks.sizes.nsqp": 0}),
    Method("w/o desc<->ID", "wo-desc-id", "generative", "ablation",
           overrides={"tasks.sizes.desc2id": 0, "tasks.sizes.id2desc": 0}),
    Method("w/o behaviour tokens", "wo-behaviour-tokens", "generative", "ablation",
           overrides={"tasks.behaviour_tokens": False},
           note="trained and decoded without `<rec_item>`/`<src_query>`/`<src_item>`: histories lose the "
                "event-type markers and decoding starts at the first code (no forced behaviour token), so the "
                "row measures the tokens as input markers and as task prefixes of the target together"),
    Method("w/o pseudo-queries", "wo-pseudo-queries", "generative", "ablation", overrides={"tasks.sizes.adhoc": 0}),
)


# What a row measures, by slug (rows in results.json carry no Method objects).
METHOD_NOTES = {m.slug: m.note for m in MAIN_METHODS + ABLATION_METHODS if m.note}

def identifier_length_method(num_shared: int, num_specific: int) -> Method:
  """GenSAR with L_m shared and L_n specific identifier levels."""
  return Method(f"GenSAR (L_m, L_n) = ({num_shared}, {num_specific})", f"ids-{num_shared}-{num_specific}",
                "generative", "identifier_length",
                overrides={"identifiers.num_shared_levels": int(num_shared),
                           "identifiers.num_specific_levels": int(num_specific)})


def suite_methods(suite: str, identifier_lengths: Iterable[Sequence[int]] = ((1, 1), (2, 2), (3, 3)),
                  baselines: Sequence[str] | None = None) -> list[Method]:
  """The methods of a suite in table order.

  main: GenSAR, single-view identifiers, single-task GenSAR and the classic baselines; ablations:
  GenSAR (the reference row), the task/token ablations and one GenSAR per (L_m, L_n); all: both.
  `baselines` keeps only these `evaluate_baselines` methods (default: all of them).
  """
  if suite not in SUITES:
    raise ValueError(f"reproduce suite: expected one of {SUITES}, got {suite!r}")
  methods: list[Method] = []
  if suite in ("main", "all"):
    methods += [m for m in MAIN_METHODS if m.kind == "generative" or baselines is None or m.baseline in baselines]
  if suite in ("ablations", "all"):
    if GENSAR not in methods:
      methods.append(GENSAR)
    methods += ABLATION_METHODS
    methods += [identifier_length_method(*pair) for pair in identifier_lengths]
  return methods


def with_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A deep copy of `config` with dotted-key overrides; unknown keys and shared sections are errors."""
  out = copy.deepcopy(config)
  for key, value in overrides.items():
    if key.split(".")[0] in SHARED_SECTIONS:
      raise ValueError(f"method override {key!r}: the sections {SHARED_SECTIONS} are shared by every method "
                       "(same data and protocol)")
    node, leaf = field_parent(out, key, f"method override {key!r}")
    with node.ignore_type():
      node[leaf] = value
  return out
