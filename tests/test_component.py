"""ProductImagesComponent: the pipeline from a defs.yaml in a dg project, loaded as dg loads it."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from bria_dagster import ProductImagesComponent
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import SecretInConfigError
from bria_dagster.records.tables import read_table, table_path
from bria_dagster.steps.registry import step_names

TYPE = "bria_dagster.ProductImagesComponent"

# Loading any component emits warnings from Dagster's own code (beta code-reference
# metadata, pydantic's deprecated parse_obj_as); they say nothing about this package.
pytestmark = [
    pytest.mark.filterwarnings("ignore::dagster.BetaWarning"),
    pytest.mark.filterwarnings("ignore:`parse_obj_as` is deprecated"),
]


def write_batch(folder: Path, batch: str, skus: list[str]) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with (folder / f"{batch}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "image_url", "category"])
        for i, sku in enumerate(skus):
            image = folder / "images" / f"{sku}.jpg"
            image.write_bytes(make_product_photo("white_studio", 40 + i, (96, 96))[0])
            writer.writerow([sku, str(image), "mug"])


@pytest.fixture
def loaded():
    """load(attributes) -> (component, defs, project root), as dg loads a defs.yaml."""
    with contextlib.ExitStack() as stack:

        def load(attributes: dict, *, create_catalog_dir: bool = True):
            sandbox = stack.enter_context(create_defs_folder_sandbox())
            path = sandbox.scaffold_component(
                component_cls=ProductImagesComponent,
                defs_yaml_contents={"type": TYPE, "attributes": attributes},
            )
            catalog_dir = attributes.get("catalog_dir", "catalogs")
            if create_catalog_dir and "://" not in catalog_dir:
                (sandbox.project_root / catalog_dir).mkdir(parents=True, exist_ok=True)
            component, defs = stack.enter_context(
                sandbox.load_component_and_build_defs(defs_path=path)
            )
            return component, defs, sandbox.project_root

        yield load


def test_yaml_builds_the_prefixed_assets_job_checks_and_operations(loaded, monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    component, defs, root = loaded(
        {
            "catalog_dir": "catalogs",
            "name": "spring",
            "steps": ["remove", "replace"],
            "prompt_template": "{category} on light oak",
            "aspect_ratios": ["1:1"],
            "checks": {"max_failure_rate": 0.2, "failure_severity": "ERROR"},
            "resource": {"max_concurrency": 4, "budget_usd": 5},
            "report_url_base": "http://reports.internal:8000/",
            "preview_rows": 120,
        }
    )
    assert isinstance(component, ProductImagesComponent)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "spring/catalog_batch",
        "spring/product_cutouts",
        "spring/product_scenes",
        "spring/audit_report",
    }
    assert defs.resolve_job_def("spring") is not None
    assert {s.name for s in defs.sensors or []} == {"spring_catalog_sensor"}
    assert {s.name for s in defs.schedules or []} == {
        "spring_retry_failed_daily",
        "spring_refresh_weekly",
    }
    settings = component.pipeline_settings(root)
    assert settings.catalog_dir == str(root / "catalogs")  # relative to the project root
    assert settings.steps == ("remove", "replace")
    assert settings.num_images == 1  # left out: PipelineSettings' default
    assert settings.checks.failure_severity == "ERROR"
    assert (settings.report_url_base, settings.preview_rows) == (
        "http://reports.internal:8000",
        120,
    )
    bria = component.bria_resource(root)
    assert component.pipeline(root).store.base == str(root / "bria_data")
    assert bria.file_roots == [str(root / ".")]
    assert (bria.max_concurrency, bria.budget_usd, bria.selected_backend()) == (4, 5.0, "local")


def test_operations_can_be_left_out_and_urls_are_kept(loaded):
    component, defs, root = loaded(
        {
            "catalog_dir": "memory://landing/catalogs",
            "storage": "memory://bria",
            "operations": False,
        }
    )
    assert not defs.sensors and not defs.schedules
    settings = component.pipeline_settings(root)
    assert (settings.report_url_base, settings.preview_rows) == (None, 50)  # the defaults
    assert component.pipeline_settings(root).catalog_dir == "memory://landing/catalogs"
    assert component.pipeline(root).store.base == "memory://bria"


def test_a_key_in_yaml_is_refused_without_repeating_it_and_the_env_key_is_used(
    tmp_path, monkeypatch
):
    with pytest.raises(SecretInConfigError, match="FAL_KEY environment variable") as info:
        ProductImagesComponent.resolve_from_yaml(
            "catalog_dir: catalogs\nresource:\n  fal_key: abc123-secret\n"
        )
    assert "abc123-secret" not in str(info.value)
    with pytest.raises(SecretInConfigError):  # from Python too
        ProductImagesComponent(resource={"fal_key": "abc123-secret"})
    with pytest.raises(ValueError, match="set `storage` at the top level"):
        ProductImagesComponent(catalog_dir="c", resource={"storage": "elsewhere"})

    monkeypatch.setenv("FAL_KEY", "key-id:key-secret")
    bria = ProductImagesComponent(catalog_dir="catalogs").bria_resource(tmp_path)
    assert bria.selected_backend() == "fal"


def causes(error: BaseException | None) -> list[str]:
    """The messages of ``error`` and of every error it was raised from (dg wraps them)."""
    found = []
    while error is not None:
        found.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return found


def test_invalid_attributes_name_the_setting(loaded, tmp_path):
    with pytest.raises(Exception) as info:  # dg wraps it in its own error, cause kept
        loaded({"catalog_dir": "catalogs", "steps": ["replace"]})
    assert any("works on the images of step 'remove'" in text for text in causes(info.value))
    with pytest.raises(ValueError, match="num_images"):
        ProductImagesComponent(catalog_dir="c", num_images=9).pipeline_settings(tmp_path)


def test_unknown_keys_in_resource_and_checks_are_errors(loaded):
    for attributes, key in (
        ({"resource": {"max_concurency": 32}}, "max_concurency"),
        ({"resource": {"prices": {"remove_usd": 0.01}}}, "remove_usd"),
        ({"checks": {"max_failure_rat": 0.2}}, "max_failure_rat"),
    ):
        with pytest.raises(Exception) as info:
            loaded(attributes)
        assert any(key in text and "Extra inputs" in text for text in causes(info.value))
    schema = ProductImagesComponent.get_model_cls().model_json_schema()
    resource = schema["$defs"][schema["properties"]["resource"]["else"]["$ref"].split("/")[-1]]
    assert "fal_key" not in resource["properties"] and "storage" not in resource["properties"]
    assert resource["properties"]["max_concurrency"]["maximum"] == 512  # BriaResource's bounds


def test_a_missing_catalog_dir_is_a_clear_error_at_load(loaded):
    with pytest.raises(Exception) as info:
        loaded({"catalog_dir": "landing/catalogs", "name": "spring"}, create_catalog_dir=False)
    message = next(text for text in causes(info.value) if text.startswith("ConfigurationError"))
    assert "'spring': catalog_dir 'landing/catalogs' is not a folder" in message
    assert "landing/catalogs does not exist): create it" in message
    # A remote URL is not checked at load (that would be a network call per load).
    loaded({"catalog_dir": "s3://nowhere-bucket/catalogs"})


def test_translation_changes_every_step_asset_and_its_dependencies(loaded):
    _, defs, _ = loaded(
        {
            "name": "spring",
            "steps": ["remove", "replace"],
            "translation": {
                "group_name": "catalog",
                "owners": ["team:catalog"],
                "tags": {"tier": "gold"},
                "key": "shop/{{ pipeline }}/{{ asset_name }}",
                "description": "{{ step }}: {{ spec.description }}",
            },
        }
    )
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {
        "shop/spring/catalog_batch",
        "shop/spring/product_cutouts",
        "shop/spring/product_scenes",
        "shop/spring/audit_report",
    }
    cutouts = graph.get(dg.AssetKey(["shop", "spring", "product_cutouts"]))
    assert cutouts.group_name == "catalog" and cutouts.owners == ["team:catalog"]
    assert cutouts.tags["tier"] == "gold" and "dagster/kind/bria" in cutouts.tags  # merged
    assert cutouts.description.startswith("remove: Background removed")
    assert cutouts.parent_keys == {dg.AssetKey(["shop", "spring", "catalog_batch"])}
    assert defs.resolve_job_def("spring") is not None


class TaggedComponent(ProductImagesComponent):
    def get_asset_spec(self, props):
        return super().get_asset_spec(props).merge_attributes(tags={"step": props.step})


def test_get_asset_spec_is_overridable_and_translation_applies_after_it(tmp_path):
    component = TaggedComponent.resolve_from_dict(
        {"name": "spring", "translation": {"key_prefix": "shop"}}
    )
    spec = component.pipeline(tmp_path).asset_spec("expand")
    assert spec.key == dg.AssetKey(["shop", "spring", "product_expansions"])
    assert spec.tags["step"] == "expand"


def test_the_scaffolder_writes_a_defs_yaml_that_loads_as_written(monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(ProductImagesComponent, defs_path="spring-catalog")
        written = yaml.safe_load((path / "defs.yaml").read_text())
        assert written["type"].endswith("ProductImagesComponent")  # the sandbox's spelling
        assert written["attributes"] == {
            "name": "spring_catalog",
            "catalog_dir": "catalogs/spring_catalog",
        }
        assert (sandbox.project_root / "catalogs" / "spring_catalog").is_dir()
        with sandbox.load_component_and_build_defs(defs_path=path) as (_, defs):
            assert defs.resolve_job_def("spring_catalog") is not None


def test_a_partition_materializes_offline_from_the_yaml_definitions(loaded, monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    _, defs, root = loaded({"catalog_dir": "catalogs", "steps": ["remove"], "name": "spring"})
    write_batch(root / "catalogs", "drop1", ["MUG-1", "MUG-2"])
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("spring_batches", ["drop1"])
    result = defs.resolve_job_def("spring").execute_in_process(
        partition_key="drop1", instance=instance
    )
    assert result.success
    key = dg.AssetKey(["spring", "product_cutouts"])
    cutouts = read_table(table_path(str(root / "bria_data"), key, "drop1"))
    assert cutouts is not None
    assert sorted(cutouts["sku"]) == ["MUG-1", "MUG-2"]
    assert set(cutouts["status"]) == {"ok"}
    assert set(cutouts["backend"]) == {"local"}
    assert set(cutouts["asset_key"]) == {"spring/product_cutouts"}


def test_fail_run_above_is_set_under_checks_in_yaml(loaded, monkeypatch):
    """1 of 4 products has no image: 25%, over the YAML's fail_run_above 0.2, so the
    job's run fails with that setting named; a share outside 0..1 is refused at load."""
    monkeypatch.delenv("FAL_KEY", raising=False)
    component, defs, root = loaded(
        {
            "catalog_dir": "catalogs",
            "steps": ["remove"],
            "name": "spring",
            "checks": {"fail_run_above": 0.2},
        }
    )
    assert component.pipeline_settings(root).checks.fail_run_above == 0.2
    write_batch(root / "catalogs", "drop1", ["MUG-1", "MUG-2", "MUG-3", "MUG-4"])
    (root / "catalogs" / "images" / "MUG-3.jpg").unlink()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("spring_batches", ["drop1"])
    result = defs.resolve_job_def("spring").execute_in_process(
        partition_key="drop1", instance=instance, raise_on_error=False
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    text = failure.step_failure_data.user_failure_data.description
    assert text.startswith("1 of 4 products of batch 'drop1' failed (25%)"), text
    assert "(checks.fail_run_above=0.2)" in text and "- MUG-3: FetchFailedError" in text
    key = dg.AssetKey(["spring", "product_cutouts"])
    cutouts = read_table(table_path(str(root / "bria_data"), key, "drop1"))
    assert cutouts is not None and sorted(cutouts["status"]) == ["failed", "ok", "ok", "ok"]

    with pytest.raises(Exception) as info:
        loaded({"checks": {"fail_run_above": 1.5}})
    assert any("fail_run_above" in text for text in causes(info.value))
    schema = ProductImagesComponent.get_model_cls().model_json_schema()
    checks = schema["$defs"][schema["properties"]["checks"]["else"]["$ref"].split("/")[-1]]
    share = checks["properties"]["fail_run_above"]
    assert (share["minimum"], share["maximum"], share["default"]) == (0, 1, 0.5)


def test_dg_finds_the_component_through_the_package_entry_point():
    from dagster.components.core.package_entry import discover_entry_point_package_objects

    found = {key.to_typename(): obj for key, obj in discover_entry_point_package_objects().items()}
    assert found.get("bria_dagster.ProductImagesComponent") is ProductImagesComponent


def test_the_readme_example_resolves(tmp_path):
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"```yaml\n(# src/<project>/defs/.*?)```", readme, re.S)
    assert block, "README lost its defs.yaml example"
    document = yaml.safe_load(block.group(1))
    assert document["type"] == TYPE
    component = ProductImagesComponent.resolve_from_dict(document["attributes"])
    settings = component.pipeline_settings(tmp_path)
    assert settings.num_images == 2 and settings.aspect_ratios == ("1:1", "4:5", "16:9")
    assert component.pipeline(tmp_path).store.base == str(tmp_path / "bria_data" / "spring_catalog")


def test_steps_and_aspect_ratios_are_enums_in_the_schema_and_at_load(loaded):
    schema = ProductImagesComponent.get_model_cls().model_json_schema()
    names = [repr(name) for name in step_names()]
    for field, values in (
        ("steps", list(step_names())),
        ("aspect_ratios", ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9"]),
    ):
        # `if` a template string (or null) `else` the list: dg check yaml then names the
        # bad item and the allowed values, not "not valid under any of the given schemas".
        assert schema["properties"][field]["else"]["items"]["enum"] == values
    # Loaded anyway (dg check defs): pydantic's error names the allowed values too.
    for attributes, allowed in (
        ({"steps": ["replce"]}, f"Input should be {', '.join(names[:-1])} or {names[-1]}"),
        ({"aspect_ratios": ["4x5"]}, "Input should be '1:1', '2:3', '3:2', '3:4', '4:3', "),
    ):
        with pytest.raises(Exception) as info:
            loaded(attributes)
        assert any(allowed in text for text in causes(info.value)), causes(info.value)


def _scaffold(sandbox, name: str, resource: dict | None) -> None:
    attributes = {"name": name, "catalog_dir": "catalogs", "steps": ["remove"]}
    if resource is not None:
        attributes["resource"] = resource
    sandbox.scaffold_component(
        component_cls=ProductImagesComponent,
        defs_path=name,
        defs_yaml_contents={"type": TYPE, "attributes": attributes},
    )


def test_components_share_one_resource_and_two_different_ones_are_named(monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    with create_defs_folder_sandbox() as sandbox:
        (sandbox.project_root / "catalogs").mkdir()
        # Set in one, left out of the other: both pipelines use the one that is set.
        _scaffold(sandbox, "autumn", None)
        _scaffold(sandbox, "spring", {"max_concurrency": 32})
        with sandbox.build_all_defs() as defs:
            assert defs.resources["bria"].max_concurrency == 32
            dg.Definitions.validate_loadable(defs)

    with create_defs_folder_sandbox() as sandbox:
        (sandbox.project_root / "catalogs").mkdir()
        _scaffold(sandbox, "autumn", None)
        _scaffold(sandbox, "spring", {"max_concurrency": 32})
        _scaffold(sandbox, "winter", {"max_concurrency": 8, "budget_usd": 5})
        with pytest.raises(Exception) as info, sandbox.build_all_defs():
            pass
        message = next(t for t in causes(info.value) if t.startswith("ConfigurationError"))
        module = sandbox.defs_folder_path.relative_to(sandbox.project_root)
        assert (
            f"ProductImagesComponent 'spring' ({module / 'spring'}) and ProductImagesComponent "
            f"'winter' ({module / 'winter'}) set different `resource` settings "
            "(max_concurrency 32 / 8, budget_usd None / 5.0)" in message
        ), message
        assert "leave it out of the others (they then use that one), or set it alike" in message
