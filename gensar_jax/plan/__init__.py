"""`gensar plan`: compile a config's programs for its TPU slice on any machine, before renting it.

Deviceless ahead-of-time compilation: `jax.experimental.topologies.get_topology_desc` (libtpu, from
`pip install -e ".[tpu]"`) describes the slice's devices without hardware; the config's mesh is built on
them with `parallel.make_mesh` and the real programs of every stage are lowered with abstract inputs
(`jax.ShapeDtypeStruct` with their `NamedSharding`s) and compiled by the TPU compiler:

  - embed: `text_encoder` (`embed.text_encoder.BertEncoder` + pooling, one batch at the longest
    length bucket) and `sasrec_train_step` (`embed.sasrec`'s jitted AdamW step), each on one chip;
  - index: `rqvae_train_step` (`identifiers.rqvae_train.make_train_epoch` over one batch), one chip;
  - doc2query: `doc2query_train_step` (`train.step.make_train_step` at doc2query's batch, lengths and
    SentencePiece vocabulary, on the slice) and `doc2query_sampling` (`decode.sampling.generate`, one
    chip per host);
  - train: `train_step` at the global batch, sequence lengths, dtype and optimizer state of the config,
    under each dropout-mask generator of `plan.dropout_rngs`;
  - validation and test: `beam_search_sampled` / `beam_search_full`, the constrained beam search
    (`decode.beam_search.search`) over per-query candidate tries and over the catalogue trie of
    `plan.num_items` items (random codes of the config's identifier shape).

For each program: per-device memory (`memory_analysis`), FLOPs and bytes (`cost_analysis`), the
collectives of the optimized HLO, and a roofline time per call from the chip figures in `CHIPS`. The
calls each stage makes follow the stages' own rules (`stage_calls`), so the pipeline's days, chip-hours
and list price (`pipeline_estimate`) cover every stage. Nothing is allocated: every input is abstract.

Modules: `chips` (the chip catalogue), `topology` (compile devices, hosts, mesh, compilation cache), `lowering`
(each program on abstract inputs), `hlo` (reading optimized HLO), `analysis` (memory, cost, roofline),
`programs` (the program registry and compiling), `dropout` (the generator comparison), `budget` (counts, stage
calls, the pipeline's estimate), `advice`, `tables` (the printed report) and `report` (`plan` itself).
"""
from gensar_jax.plan.budget import STAGES
from gensar_jax.plan.chips import CHIPS, GPUS, Chip
from gensar_jax.plan.programs import PROGRAMS
from gensar_jax.plan.report import plan, plan_config
from gensar_jax.plan.tables import format_duration, format_plan
from gensar_jax.plan.topology import slice_hosts

__all__ = ["CHIPS", "GPUS", "PROGRAMS", "STAGES", "Chip", "format_duration", "format_plan", "plan", "plan_config",
           "slice_hosts"]
