"""One module per step that calls a Bria endpoint; each declares ``STEP``.

:mod:`bria_dagster.steps.registry` finds every module here: a new step is a new module
(with its endpoint contract in :mod:`bria_dagster.client`), nothing else to register.
"""
