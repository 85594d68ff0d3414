"""`gensar reproduce`: GenSAR, its variants and the classic baselines on one prepared dataset and one
evaluation protocol, written as the paper's tables.

methods: what is compared (`Method`, the suites, the `reproduce` config section); run: running them with
shared stages (`reproduce_main`); tables: tables.md and tradeoff.png from results.json.
"""
from gensar_jax.reproduce.methods import (ABLATION_METHODS, GENSAR, MAIN_METHODS, METHOD_NOTES, REPRODUCE_SCHEMA,
                                          SHARED_SECTIONS, SUITES, Method, identifier_length_method,
                                          reproduce_config, reproduce_section, suite_methods, with_overrides)
from gensar_jax.reproduce.run import (Timings, add_reproduce_args, baseline_metrics, reproduce_main, run_method,
                                      run_reference_pipeline)
from gensar_jax.reproduce.tables import TASK_TITLES, format_tables, plot_tradeoff

__all__ = ["ABLATION_METHODS", "GENSAR", "MAIN_METHODS", "METHOD_NOTES", "REPRODUCE_SCHEMA", "SHARED_SECTIONS",
           "SUITES", "TASK_TITLES", "Method", "Timings", "add_reproduce_args", "baseline_metrics", "format_tables",
           "identifier_length_method", "plot_tradeoff", "reproduce_config", "reproduce_main", "reproduce_section",
           "run_method", "run_reference_pipeline", "suite_methods", "with_overrides"]
