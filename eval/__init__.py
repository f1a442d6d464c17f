"""Evaluation layer: datasets, rewrite metrics and lm-eval probes (imports no ray, no duckdb).

* :mod:`eval.datasets`: CounterFact / zsRE / attribute snippets / TF-IDF / toy-world loaders.
* :mod:`eval.corpus`: the preservation corpus (wikimedia/wikipedia, wikitext, local files, toy wiki).
* :mod:`eval.rewrite`: batched CounterFact and zsRE metrics, returning :class:`eval.rows.MetricRow`.
* :mod:`eval.generation`: the seeded top-k sampler behind fluency and consistency.
* :mod:`eval.probes`: the lm-eval adapter (``run_probes``, ``run_probes_with_deltas``).
* :mod:`eval.edited`: base + deltas in memory (``edited_weights``) and checkpoint folders.
"""
