"""Ray layer: thin wrappers that run the library's work on a cluster.

``cluster.workers`` holds the work as plain Python (tested in-process); ``cluster.pipeline``
orchestrates a sweep (resume, failures) through an ``cluster.executor.Executor``: ``RayExecutor``
wraps the work with ``ray.remote`` (resources from the sweep config), ``LocalExecutor`` runs the
same code path in-process for unit tests; ``cluster.config`` validates sweep YAML and expands the grid.
"""
