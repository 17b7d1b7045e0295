"""The Dagster layer: resource, pipeline, assets, checks, IO manager, automation, metadata,
translator and component; the only package besides the CLI that imports Dagster.

Importing it registers bria-dagster in Dagster's library registry, as Dagster's own
integrations do in their ``__init__`` (dagster-k8s, dagster-aws; community ones with
``is_dagster_package=False``, since their versions do not follow Dagster's). That happens
here and not in ``bria_dagster/__init__.py``, which stays free of Dagster so that
``bria-dagster lineage`` answers without importing it.
"""

from dagster_shared.libraries import DagsterLibraryRegistry

from .._version import __version__

DagsterLibraryRegistry.register("bria-dagster", __version__, is_dagster_package=False)
