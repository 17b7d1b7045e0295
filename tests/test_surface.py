"""The public surface: what a definitions.py needs, nothing that shadows Dagster."""

import dagster as dg

import bria_dagster


def test_the_top_level_names_are_the_user_facing_ones_and_shadow_nothing_of_dagster():
    names = set(bria_dagster.__all__) - {"__version__"}
    assert 15 <= len(names) <= 25, sorted(names)
    assert not names & set(dir(dg)), names & set(dir(dg))
    for name in names:  # each one resolves (the lazy imports are right)
        assert getattr(bria_dagster, name) is not None
    # Internals stay importable from their modules.
    from bria_dagster.client.backends.fal import FalBackend
    from bria_dagster.client.retry import RetryPolicy
    from bria_dagster.client.runner import run_batch

    assert FalBackend and RetryPolicy and run_batch
    assert "RetryPolicy" not in names  # it used to shadow dagster.RetryPolicy


def test_the_resource_description_shown_in_the_ui_has_no_code_literal():
    description = bria_dagster.BriaResource.__doc__ or ""
    assert "fal" in description and "embedded engine" in description
    assert "Example::" not in description
