"""Ray layer: thin wrappers that run the library's work on a cluster.

``cluster.workers`` holds the work as plain Python (tested in-process); ``cluster.pipeline`` wraps
it with ``ray.remote`` (resources from the sweep config) and orchestrates a sweep;
``cluster.config`` validates sweep YAML and expands the grid.
"""
