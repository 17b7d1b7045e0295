"""The README's Kubernetes ``dagster.yaml``, loaded as a real instance.

No cluster runs here (see the README, "Kubernetes: what changes"): what is checked is
that the very text in the README is a valid instance configuration for dagster-k8s
(Postgres storage on the suite's real server, the run queue, ``K8sRunLauncher``), and
that the Job manifest dagster-k8s builds for a run pod takes ``FAL_KEY`` from the
Secret, never as a value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job

REPO = Path(__file__).resolve().parents[1]
KEY = "fal-key-that-must-not-appear"


def readme_k8s_yaml() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    found = [b for b in blocks if "K8sRunLauncher" in b]
    assert len(found) == 1, "the README has one Kubernetes dagster.yaml"
    return found[0]


def kubeconfig(path: Path) -> Path:
    """Stands in for the in-cluster service account credentials (nothing connects)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_readme_kubernetes_dagster_yaml_loads_with_k8s_run_launcher(
    postgres_server, tmp_path, monkeypatch
):
    document = yaml.safe_load(readme_k8s_yaml())
    launcher_config = document["run_launcher"]["config"]
    assert launcher_config["env_secrets"] == ["bria-secrets"]
    # Outside a cluster: a kubeconfig instead of the pod's service account.
    launcher_config.update(
        load_incluster_config=False, kubeconfig_file=str(kubeconfig(tmp_path / "kubeconfig"))
    )
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(document))
    monkeypatch.setenv("DAGSTER_PG_URL", postgres_server.create_database("k8s_readme"))
    monkeypatch.setenv("FAL_KEY", KEY)

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        launcher = instance.run_launcher
        assert isinstance(launcher, K8sRunLauncher)
        assert launcher.job_namespace == "catalog"
        assert list(launcher.env_secrets) == ["bria-secrets"]
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"

        # The run pod's Job, as dagster-k8s builds it for a queued run of the pipeline.
        run = DagsterRun(job_name="product_images", run_id="0" * 8 + "-k8s-readme")
        context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
        job = construct_dagster_k8s_job(
            job_config=context.get_k8s_job_config(
                job_image="registry.example/catalog:1", run_launcher=launcher
            ),
            args=["dagster", "api", "execute_run", "{}"],
            job_name="dagster-run-k8s-readme",
            pod_name="dagster-run-k8s-readme",
            component="run_worker",
            user_defined_k8s_config=context.run_k8s_config,
            labels={"dagster/job": "product_images"},
        )
        manifest = job.to_dict()
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        secrets = [
            source["secret_ref"]["name"]
            for source in container.get("env_from") or []
            if source.get("secret_ref")
        ]
        assert secrets == ["bria-secrets"]
        assert manifest["metadata"]["name"] == "dagster-run-k8s-readme"
        assert KEY not in json.dumps(manifest, default=str)
        assert "FAL_KEY" not in json.dumps(container.get("env") or [], default=str)
    finally:
        instance.dispose()
