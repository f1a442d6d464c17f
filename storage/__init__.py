"""Results database (DuckDB) and artifact store of the AlphaEdit batch-evaluation system.

Import from the submodules; this package imports nothing heavy on its own and never imports
ray, torch or lm_eval (duckdb itself is imported only when a file is opened):

* ``storage.names``: shared names (tables, metrics, probes, stages, statuses).
* ``storage.writer.ResultWriter``: the single writer of a results file.
* ``storage.reader.ResultsReader``: read-only queries returning polars frames.
* ``storage.artifacts.ArtifactStore``: keyed, atomic, verified artifact files.
* ``python -m storage.query`` / ``python -m storage.export``: command lines.
* ``storage.live``: queries on a file a running sweep holds, through its writer actor (imports
  ``ray`` only when it asks one).

See ``storage/README.md`` for the schema, the rerun rule and the migration path.
"""
