"""deploy/fleet, checked offline like deploy/kubernetes (tests/deploy/test_deploy.py): the overlay's objects
against the strict Kubernetes schemas, the gate's connection string from a Secret through the
environment (``env:NAME``), never in the ConfigMap, and the shipped configuration loading with the
gate's own loader."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, cast

import kubernetes_validate
import pytest
import yaml
from test_deploy import (
    GATE,
    K8S_VERSIONS,
    KUBE,
    README,
    base_objects,
    container,
    json_patch_add,
    kustomization,
    lay_out_pod_files,
    load_docs,
    pod_spec,
)

from aidr_gate.cli import EXIT_OK, main
from support.environment import require_tool

FLEET = KUBE.parent / "fleet"
SECRET = "aidr-gate-registry"
DSN_VARIABLE = "AIDR_REGISTRY_DSN"

Doc = dict[str, Any]


def fleet_objects() -> list[Doc]:
    """Every object of deploy/fleet: the base patched, the Job, the replaced ConfigMap."""
    overlay = kustomization(FLEET)
    assert overlay["resources"][0] == "../kubernetes"
    (patch,) = overlay["patches"]
    ops = cast(list[Doc], yaml.safe_load((FLEET / patch["path"]).read_text(encoding="utf-8")))
    (generator,) = overlay["configMapGenerator"]
    assert generator["behavior"] == "replace"
    docs: list[Doc] = []
    for doc in base_objects():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == generator["name"]:
            doc = {
                **doc,
                "data": {
                    Path(name).name: (FLEET / name).read_text(encoding="utf-8")
                    for name in generator["files"]
                },
            }
        elif doc["kind"] == patch["target"]["kind"] and doc["metadata"]["name"] == "model-server":
            doc = json_patch_add(doc, ops)
        docs.append(doc)
    for name in overlay["resources"][1:]:
        docs.extend(load_docs(FLEET / name))
    return docs


def fleet_config() -> Doc:
    return cast(Doc, yaml.safe_load((FLEET / "config" / "config.yaml").read_text(encoding="utf-8")))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_strict_schemas(version: str) -> None:
    for doc in fleet_objects():
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomize_build_renders_the_overlay() -> None:
    kubectl = require_tool("kubectl")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(FLEET)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert sorted(d["kind"] for d in docs) == sorted(d["kind"] for d in fleet_objects())
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    gate = container(pod_spec(docs), GATE)
    assert {
        "name": DSN_VARIABLE,
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "dsn"}},
    } in (gate["env"])
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert "store: env:" + DSN_VARIABLE in configmap["data"]["config.yaml"]


def test_the_gate_reads_the_connection_string_from_the_secret() -> None:
    objects = fleet_objects()
    spec = pod_spec(objects)
    gate = container(spec, GATE)
    env = {e["name"]: e for e in gate["env"]}
    assert env[DSN_VARIABLE]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "dsn"}
    assert fleet_config()["registry"]["store"] == f"env:{DSN_VARIABLE}"
    # Nothing else changed in the pod: the base's containers in the base's order.
    assert [c["name"] for c in spec["initContainers"]] == [
        c["name"] for c in pod_spec(base_objects())["initContainers"]
    ]
    deployment = next(d for d in objects if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    job = next(d for d in objects if d["kind"] == "Job")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["image"] == gate["image"]
    assert migrate["args"][:2] == ["registry", "migrate"]
    variable = migrate["args"][2].removeprefix("env:")
    (ref,) = [e for e in migrate["env"] if e["name"] == variable]
    assert ref["valueFrom"]["secretKeyRef"]["name"] == SECRET


def test_no_connection_string_is_in_the_configmap_or_a_command_line() -> None:
    url = re.compile(r"postgres(ql)?://|password\s*=|dbname=", re.IGNORECASE)
    for doc in fleet_objects():
        if doc["kind"] == "ConfigMap":
            for name, text in doc["data"].items():
                assert not url.search(text), name
        if doc["kind"] in ("Deployment", "Job"):
            spec = doc["spec"]["template"]["spec"]
            for item in [*spec.get("initContainers", []), *spec["containers"]]:
                assert not url.search(" ".join(item.get("args", []))), item["name"]
                for env in item.get("env", []):
                    assert "value" not in env or not url.search(str(env["value"])), env


def test_the_catalogue_is_the_base_one() -> None:
    assert (FLEET / "config" / "models.yaml").read_text() == (
        KUBE / "config" / "models.yaml"
    ).read_text()


def test_shipped_configuration_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fleet's configuration passes ``aidr-gate validate`` (the store is named, not reached)."""
    names = ("config.yaml", "models.yaml")
    lay_out_pod_files(tmp_path, {name: (FLEET / "config" / name).read_text() for name in names})
    monkeypatch.setenv(DSN_VARIABLE, "postgresql://gate@db.example.internal:5432/registry")
    assert main(["validate", "--config", str(tmp_path / "config.yaml")]) == EXIT_OK
    assert "registry postgres" in capsys.readouterr().out
    monkeypatch.delenv(DSN_VARIABLE)
    assert main(["validate", "--config", str(tmp_path / "config.yaml")]) != EXIT_OK
    assert DSN_VARIABLE in capsys.readouterr().err


def test_readme_creates_the_secret_with_both_keys() -> None:
    readme = README.read_text(encoding="utf-8")
    commands = [
        " ".join(shlex.split(block.replace("\\\n", " ")))
        for block in re.findall(r"kubectl create secret generic [^`]*?(?:\n\n|```)", readme)
    ]
    (command,) = [c for c in commands if c.startswith(f"kubectl create secret generic {SECRET} ")]
    assert "--from-literal=dsn=" in command and "--from-literal=migrate-dsn=" in command
