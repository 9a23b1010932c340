"""The deployment kit under deploy/: Dockerfile, Kubernetes manifests and the audit shipper.

Everything is checked offline: the manifests against the strict Kubernetes OpenAPI schemas that
``kubernetes-validate`` bundles, the Dockerfile with a real parser (and hadolint where installed),
the gate's configuration with the gate's own loader, and the shipper's VRL program with Vector's
VRL compiler on real audit lines. No image is built here: there is no container engine.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, cast

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from aidr_gate.cli import EXIT_OK, main
from support.environment import IN_CI, ROOT, require_tool
from support.jwks_server import jwks_of, rsa_key
from support.mmdb_files import write_country_db

DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
VECTOR = DEPLOY / "vector"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = DEPLOY / "README.md"

# The oldest release where native sidecars are stable, and the newest the package bundles.
K8S_VERSIONS = ("1.33", ".".join(kubernetes_validate.latest_version().split(".")[:2]))

GATE = "aidr-gate"
MODEL = "model-server"
SHIPPER = "audit-shipper"
GATE_PORT = 8080
UPSTREAM = "http://127.0.0.1:8000"
CONFIGMAP_LIMIT = 1024 * 1024
# What the gate may take to drain in-flight streams after SIGTERM unless configured otherwise.
GATE_DRAIN_SECONDS = 30

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Loading: the manifests as kustomize assembles them, without kustomize.


def load_docs(path: Path) -> list[Doc]:
    """Every non-empty YAML document of a file."""
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def kustomization(directory: Path) -> Doc:
    """A directory's kustomization.yaml."""
    (doc,) = load_docs(directory / "kustomization.yaml")
    return doc


def generated_configmaps(directory: Path) -> list[Doc]:
    """The ConfigMaps a kustomization's configMapGenerator makes (before the name hash)."""
    made: list[Doc] = []
    for generator in kustomization(directory).get("configMapGenerator", []):
        data = {}
        for name in generator["files"]:
            path = directory / name
            data[path.name] = path.read_text(encoding="utf-8")
        made.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    return made


def base_objects() -> list[Doc]:
    """Every object of deploy/kubernetes: the listed resources and the generated ConfigMap."""
    docs: list[Doc] = []
    for name in kustomization(KUBE)["resources"]:
        docs.extend(load_docs(KUBE / name))
    return docs + generated_configmaps(KUBE)


def json_patch_add(target: Doc, ops: list[Doc]) -> Doc:
    """Apply RFC 6902 ``add`` operations (the only kind sidecar.patch.yaml uses) to a copy."""
    result = copy.deepcopy(target)
    for op in ops:
        assert op["op"] == "add", f"unexpected patch operation {op['op']!r}"
        *parents, last = op["path"].lstrip("/").split("/")
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), op["value"])
        else:
            node[last] = op["value"]
    return result


def shipping_objects() -> list[Doc]:
    """Every object of deploy/vector: the base with the shipper sidecar patched in."""
    overlay = kustomization(VECTOR)
    assert overlay["resources"] == ["../kubernetes"]
    (patch,) = overlay["patches"]
    ops = cast(list[Doc], yaml.safe_load((VECTOR / patch["path"]).read_text(encoding="utf-8")))
    docs = []
    for doc in base_objects():
        target = patch["target"]
        if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
            doc = json_patch_add(doc, ops)
        docs.append(doc)
    return docs + generated_configmaps(VECTOR)


def only(docs: list[Doc], kind: str) -> Doc:
    """The one object of a kind."""
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[Doc]) -> Doc:
    """The Deployment's pod template spec."""
    return cast(Doc, only(docs, "Deployment")["spec"]["template"]["spec"])


def container(spec: Doc, name: str) -> Doc:
    """A container or init container of a pod spec, by name."""
    for item in [*spec.get("initContainers", []), *spec["containers"]]:
        if item["name"] == name:
            return cast(Doc, item)
    raise AssertionError(f"no container {name!r}")


def all_containers(spec: Doc) -> Iterator[Doc]:
    """Init containers, then containers."""
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in an argument list."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def mount_for(item: Doc, path: str) -> Doc | None:
    """The volume mount of a container under which *path* lies (the deepest one)."""
    best: Doc | None = None
    for mount in item.get("volumeMounts", []):
        if PurePosixPath(path).is_relative_to(mount["mountPath"]) and (
            best is None or len(mount["mountPath"]) > len(best["mountPath"])
        ):
            best = mount
    return best


def gate_config() -> Doc:
    """The gate's configuration file as it ships in the ConfigMap."""
    (doc,) = load_docs(KUBE / "config" / "config.yaml")
    return doc


def audit_file_path() -> str:
    """Where the gate's configuration tells it to write audit records."""
    (sink,) = [s for s in gate_config()["audit"]["sinks"] if s["type"] == "file"]
    return cast(str, sink["path"])


# ---------------------------------------------------------------------------------------------
# Schemas


def schema_cases() -> list[Any]:
    cases = []
    for label, objects in (("base", base_objects()), ("shipping", shipping_objects())):
        for doc in objects:
            for version in K8S_VERSIONS:
                ident = f"{label}-{doc['kind']}-{doc['metadata']['name']}-{version}"
                cases.append(pytest.param(doc, version, id=ident))
    return cases


@pytest.mark.parametrize(("doc", "version"), schema_cases())
def test_object_validates_against_strict_kubernetes_schema(doc: Doc, version: str) -> None:
    # Strict: an unknown field (a typo, a field from a newer release) is an error, as kubectl's
    # server-side field validation makes it.
    assert kubernetes_validate.validate(doc, version, strict=True) == version


def test_strict_schema_catches_a_misspelt_field() -> None:
    """The validation above has teeth: a typo in the sidecar's restartPolicy fails it."""
    broken = copy.deepcopy(only(base_objects(), "Deployment"))
    gate = container(broken["spec"]["template"]["spec"], GATE)
    gate["restartPolicys"] = gate.pop("restartPolicy")
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicys"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    base = kustomization(KUBE)
    on_disk = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(base["resources"]) == on_disk
    (generator,) = base["configMapGenerator"]
    assert set(generator["files"]) == {
        str(p.relative_to(KUBE)) for p in (KUBE / "config").iterdir()
    }
    shipping = kustomization(VECTOR)
    used = {p["path"] for p in shipping["patches"]} | {
        f for g in shipping["configMapGenerator"] for f in g["files"]
    }
    assert used == {p.name for p in VECTOR.iterdir()} - {"kustomization.yaml"}
    # Namespaced objects land in one namespace, the one namespace.yaml creates; the overlay
    # repeats it so its generated ConfigMap lands there too.
    (namespace,) = load_docs(KUBE / "namespace.yaml")
    assert base["namespace"] == shipping["namespace"] == namespace["metadata"]["name"]


@pytest.mark.parametrize("directory", [KUBE, VECTOR], ids=["base", "shipping"])
def test_kustomize_build_validates(directory: Path) -> None:
    """kubectl's kustomize renders the directory; every rendered object passes the schemas."""
    kubectl = require_tool("kubectl")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    expected = base_objects() if directory == KUBE else shipping_objects()
    assert sorted(d["kind"] for d in docs) == sorted(d["kind"] for d in expected)
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization(directory)["namespace"]
    spec = pod_spec(docs)
    # The rendered pod is the one the offline assembly checks below: same containers, same order.
    assert [c["name"] for c in all_containers(spec)] == [
        c["name"] for c in all_containers(pod_spec(expected))
    ]
    # Every ConfigMap volume names a ConfigMap of the build (with its content hash, if any).
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for volume in spec["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in configmaps


# ---------------------------------------------------------------------------------------------
# The pod: gate as a native sidecar, model server on loopback, probes, hardening


def test_gate_is_a_native_sidecar() -> None:
    spec = pod_spec(base_objects())
    gate = container(spec, GATE)
    assert gate in spec["initContainers"]
    assert gate["restartPolicy"] == "Always"
    # It is the last init container: the kubelet starts the model server right after its startup
    # probe passes, and stops it before the gate.
    assert spec["initContainers"][-1] is gate
    # Every other init container is a sidecar too: a run-to-completion init container after the
    # gate would delay the model server, one before it would block the gate.
    assert all(c.get("restartPolicy") == "Always" for c in spec["initContainers"])


def test_gate_command_line() -> None:
    args = container(pod_spec(base_objects()), GATE)["args"]
    assert args[0] == "serve"
    assert flag(args, "--config") == "/etc/aidr-gate/config.yaml"
    assert flag(args, "--upstream") == UPSTREAM
    # All pod interfaces, since the kubelet probes and the Service reach the pod IP.
    assert flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--port") == str(GATE_PORT)
    assert container(pod_spec(base_objects()), GATE)["ports"] == [
        {"name": "gate", "containerPort": GATE_PORT, "protocol": "TCP"}
    ]


def test_model_server_is_bound_to_loopback() -> None:
    spec = pod_spec(base_objects())
    model = container(spec, MODEL)
    args = [*model.get("command", []), *model.get("args", [])]
    assert flag(args, "--host") == "127.0.0.1"
    assert flag(args, "--port") == UPSTREAM.rsplit(":", 1)[1]
    # Nothing advertises its port: no containerPort, no Service, no httpGet probe on it.
    assert "ports" not in model
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "httpGet" not in model.get(probe, {})
    # Its own probes run inside its container, on loopback, against its health endpoint.
    for probe in ("startupProbe", "livenessProbe"):
        command = " ".join(model[probe]["exec"]["command"])
        assert "http://127.0.0.1:8000/health" in command


def test_gate_probes() -> None:
    gate = container(pod_spec(base_objects()), GATE)
    paths = {
        probe: (gate[probe]["httpGet"]["path"], gate[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        # /readyz needs the model server, which starts only once this probe passed.
        "startupProbe": ("/healthz", GATE_PORT),
        "livenessProbe": ("/healthz", GATE_PORT),
        "readinessProbe": ("/readyz", GATE_PORT),
    }


def test_every_sidecar_has_a_startup_gate() -> None:
    """Sidecars that the next container depends on declare when they are up."""
    spec = pod_spec(base_objects())
    for item in spec["initContainers"]:
        assert "startupProbe" in item, item["name"]


def test_termination_grace_covers_the_stop_sequence() -> None:
    spec = pod_spec(base_objects())
    pause = container(spec, MODEL)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pause + GATE_DRAIN_SECONDS


def test_resources_are_requested() -> None:
    for spec in (pod_spec(base_objects()), pod_spec(shipping_objects())):
        for item in all_containers(spec):
            resources = item["resources"]
            assert resources["requests"]["memory"], item["name"]
            assert resources["requests"]["cpu"], item["name"]
            assert resources["limits"]["memory"], item["name"]


# The Pod Security Standard "restricted" (namespace.yaml enforces it) allows these volume types.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@pytest.mark.parametrize("objects", [base_objects(), shipping_objects()], ids=["base", "shipping"])
def test_security_context_hardening(objects: list[Doc]) -> None:
    spec = pod_spec(objects)
    pod = spec["securityContext"]
    assert spec["automountServiceAccountToken"] is False
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for item in all_containers(spec):
        context = item["securityContext"]
        effective = {**pod, **context}
        assert effective["runAsNonRoot"] is True, item["name"]
        assert effective["runAsUser"] > 0, item["name"]
        assert effective["seccompProfile"] == {"type": "RuntimeDefault"}, item["name"]
        assert context["allowPrivilegeEscalation"] is False, item["name"]
        assert context["readOnlyRootFilesystem"] is True, item["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, item["name"]
        assert not context.get("privileged"), item["name"]
    for volume in spec["volumes"]:
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUME_TYPES, volume["name"]
    assert not spec.get("hostNetwork")
    assert not spec.get("hostPID")
    assert not spec.get("hostIPC")
    namespace = only(objects, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


# ---------------------------------------------------------------------------------------------
# Service, NetworkPolicy, PodDisruptionBudget


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A matchLabels selector matches a label set."""
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(docs: list[Doc]) -> dict[str, str]:
    return cast(dict[str, str], only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"])


def test_service_targets_only_the_gate_port() -> None:
    docs = base_objects()
    service = only(docs, "Service")
    assert selects(service["spec"]["selector"], pod_labels(docs))
    assert service["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [GATE_PORT]


def test_network_policy_admits_only_the_gate_port() -> None:
    docs = base_objects()
    policy = only(docs, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels(docs))
    assert "Ingress" in policy["policyTypes"]
    assert policy["ingress"], "an empty ingress list would deny the gate too"
    for rule in policy["ingress"]:
        # A rule without ports would admit every port, the model server's included.
        assert rule["ports"] == [{"protocol": "TCP", "port": GATE_PORT}]


def test_disruption_budget_covers_the_pods() -> None:
    docs = base_objects()
    budget = only(docs, "PodDisruptionBudget")["spec"]
    assert selects(budget["selector"]["matchLabels"], pod_labels(docs))
    replicas = only(docs, "Deployment")["spec"]["replicas"]
    assert 0 < budget["maxUnavailable"] < replicas


# ---------------------------------------------------------------------------------------------
# Configuration in the ConfigMap


@pytest.mark.parametrize("directory", [KUBE, VECTOR], ids=["gate", "shipper"])
def test_configmaps_fit_the_size_limit(directory: Path) -> None:
    for configmap in generated_configmaps(directory):
        size = len(json.dumps(configmap).encode())
        assert size < CONFIGMAP_LIMIT, (configmap["metadata"]["name"], size)


def test_configmap_holds_no_databases_or_keys() -> None:
    (configmap,) = generated_configmaps(KUBE)
    for name, text in configmap["data"].items():
        assert name.endswith(".yaml"), name
        assert "PRIVATE KEY" not in text, name


def lay_out_pod_files(tmp_path: Path, files: Mapping[str, str]) -> None:
    """The configuration *files* as the pod mounts them, with what the pod mounts beside the
    ConfigMap: the Secret's key set, geoipupdate's database and the writable audit volume, under
    *tmp_path* in place of /etc, /var/lib (validate opens them)."""
    mounts = {
        "/etc/aidr-gate-keys/": tmp_path / "keys",
        "/var/lib/geoip/": tmp_path / "geoip",
        "/var/lib/aidr-gate/": tmp_path / "state",
    }
    for folder in mounts.values():
        folder.mkdir()
    (tmp_path / "keys" / "jwks.json").write_text(json.dumps(jwks_of(rsa_key())))
    write_country_db(tmp_path / "geoip" / "GeoLite2-Country.mmdb", {"8.8.8.0/24": "US"})
    for name, text in files.items():
        for mounted, local in mounts.items():
            text = text.replace(mounted, f"{local}/")
        (tmp_path / name).write_text(text, encoding="utf-8")


def test_shipped_configuration_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The ConfigMap's files, laid out as the pod mounts them, pass ``aidr-gate validate``."""
    (configmap,) = generated_configmaps(KUBE)
    lay_out_pod_files(tmp_path, configmap["data"])
    assert main(["validate", "--config", str(tmp_path / "config.yaml")]) == EXIT_OK
    assert "ok:" in capsys.readouterr().out


def test_configured_paths_are_mounted() -> None:
    """Every file the configuration names sits on a volume the gate mounts, writable if written."""
    gate = container(pod_spec(base_objects()), GATE)
    config_mount = mount_for(gate, flag(gate["args"], "--config") or "")
    assert config_mount is not None
    assert config_mount["name"] == "config"
    config = gate_config()
    read = {
        config["identity"]["key_file"]: "jwt-keys",
        config["geoip"]["country_database"]: "geoip",
    }
    for path, volume in read.items():
        mount = mount_for(gate, path)
        assert mount is not None, path
        assert mount["name"] == volume, path
        assert mount["readOnly"] is True, path
    audit = mount_for(gate, audit_file_path())
    assert audit is not None, audit_file_path()
    assert not audit.get("readOnly"), audit_file_path()
    # The database comes from the geoipupdate sidecar, written where the gate reads it.
    geoipupdate = container(pod_spec(base_objects()), "geoipupdate")
    env = {e["name"]: e.get("value") for e in geoipupdate["env"]}
    database = PurePosixPath(config["geoip"]["country_database"])
    assert env["GEOIPUPDATE_DB_DIR"] == str(database.parent)
    assert database.stem in env["GEOIPUPDATE_EDITION_IDS"].split()
    written = mount_for(geoipupdate, str(database))
    assert written is not None
    assert written["name"] == "geoip"
    assert not written.get("readOnly")


def secret_references(objects: list[Doc]) -> dict[str, set[str]]:
    """Secret name -> keys the pod reads from it (empty for whole-Secret volumes)."""
    spec = pod_spec(objects)
    found: dict[str, set[str]] = {}
    for volume in spec["volumes"]:
        if "secret" in volume:
            found.setdefault(volume["secret"]["secretName"], set())
    for item in all_containers(spec):
        for env in item.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                found.setdefault(ref["name"], set()).add(ref["key"])
    return found


def test_readme_says_how_to_create_every_secret() -> None:
    readme = README.read_text(encoding="utf-8")
    commands = [
        " ".join(shlex.split(block.replace("\\\n", " ")))
        for block in re.findall(r"kubectl create secret generic [^`]*?(?:\n\n|```)", readme)
    ]
    for name, keys in secret_references(shipping_objects()).items():
        matching = [c for c in commands if c.startswith(f"kubectl create secret generic {name} ")]
        assert matching, f"deploy/README.md does not create Secret {name!r}"
        for key in keys:
            assert any(
                f"--from-literal={key}=" in c or f"--from-file={key}=" in c for c in matching
            )
    # The key files the gate and geoipupdate read are the Secret keys the README creates.
    spec = pod_spec(base_objects())
    key_file = PurePosixPath(gate_config()["identity"]["key_file"])
    assert any(f"--from-file={key_file.name}=" in c for c in commands)
    geoipupdate = container(spec, "geoipupdate")
    for env in geoipupdate["env"]:
        if env["name"].endswith("_FILE"):
            assert any(f"={PurePosixPath(env['value']).name}=" in c for c in commands), env


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE), cache_content=True)


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    """The instructions after the last FROM."""
    structure = cast(list[dict[str, Any]], parser.structure)
    last_from = max(i for i, item in enumerate(structure) if item["instruction"] == "FROM")
    return structure[last_from:]


PINNED = re.compile(
    r"^python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}(\s+AS\s+\w+)?$", re.IGNORECASE
)


def test_dockerfile_base_is_pinned() -> None:
    parser = dockerfile()
    froms = [i["value"] for i in parser.structure if i["instruction"] == "FROM"]
    assert len(froms) == 2, "multi-stage: a build stage and a runtime stage"
    for value in froms:
        assert PINNED.match(value), value
        assert "latest" not in value.lower()
    # Both stages on the same base, so the virtual environment's interpreter link holds.
    assert len({value.split()[0] for value in froms}) == 1


def test_dockerfile_runtime_stage() -> None:
    parser = dockerfile()
    runtime = final_stage(parser)
    instructions = [item["instruction"] for item in runtime]
    users = [item["value"] for item in runtime if item["instruction"] == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    # Numeric and non-root: the kubelet can check runAsNonRoot only against a numeric UID.
    assert uid.isdigit()
    assert int(uid) > 0
    assert not gid or gid.isdigit()
    assert instructions.index("USER") < instructions.index("ENTRYPOINT")
    assert [item["value"] for item in runtime if item["instruction"] == "EXPOSE"] == [
        str(GATE_PORT)
    ]
    (entrypoint,) = [i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["aidr-gate"]
    (cmd,) = [i["value"] for i in runtime if i["instruction"] == "CMD"]
    args = json.loads(cmd)
    assert args[0] == "serve"
    assert flag(args, "--port") == str(GATE_PORT)
    assert flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--upstream") == UPSTREAM
    # The runtime stage copies the built environment and installs nothing: no compiler, no
    # package manager run, and the base's own installers removed.
    runs = " ".join(i["value"] for i in runtime if i["instruction"] == "RUN")
    assert "apt-get install" not in runs
    assert "pip install" not in runs
    assert "pip uninstall" in runs
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert copies
    assert all(c.startswith("--from=build ") for c in copies)
    # The state directory is a volume, so a read-only root filesystem still has its one writable
    # place; Kubernetes mounts its own volume there.
    assert any(
        "/var/lib/aidr-gate" in json.loads(i["value"])
        for i in runtime
        if i["instruction"] == "VOLUME"
    )


def test_dockerfile_copies_only_what_it_may() -> None:
    parser = dockerfile()
    for item in parser.structure:
        # ADD fetches URLs and unpacks archives; COPY does neither.
        assert item["instruction"] != "ADD", item["content"]
    sources = []
    for item in parser.structure:
        if item["instruction"] == "COPY" and not item["value"].startswith("--from="):
            sources.extend(item["value"].split()[:-1])
    assert sources
    allowed = [
        line[1:].rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    assert DOCKERIGNORE.read_text(encoding="utf-8").splitlines().count("*") == 1
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = require_tool("hadolint", str(Path(sys.executable).with_name("hadolint")))
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_and_manifest_agree() -> None:
    """The pod runs the gate with the port, user and entrypoint the image declares."""
    parser = dockerfile()
    runtime = final_stage(parser)
    (user,) = [i["value"] for i in runtime if i["instruction"] == "USER"]
    spec = pod_spec(base_objects())
    gate = container(spec, GATE)
    effective = {**spec["securityContext"], **gate["securityContext"]}
    assert user == f"{effective['runAsUser']}:{effective['runAsGroup']}"
    assert "command" not in gate, "the image's ENTRYPOINT (aidr-gate) runs the args"


# ---------------------------------------------------------------------------------------------
# The audit shipper


def vector_config() -> Doc:
    (doc,) = load_docs(VECTOR / "vector.yaml")
    return doc


def test_shipper_reads_the_file_the_gate_writes() -> None:
    config = vector_config()
    (source,) = config["sources"].values()
    assert source["type"] == "file"
    audit = audit_file_path()
    assert any(fnmatch.fnmatch(audit, pattern) for pattern in source["include"])
    # Rotated files too, but not compressed ones.
    assert any(fnmatch.fnmatch(audit + ".1", pattern) for pattern in source["include"])
    for packed in (".1.gz", ".1.zst"):
        assert any(fnmatch.fnmatch(audit + packed, pattern) for pattern in source["exclude"])
    spec = pod_spec(shipping_objects())
    shipper, gate = container(spec, SHIPPER), container(spec, GATE)
    read, written = mount_for(shipper, audit), mount_for(gate, audit)
    assert read is not None
    assert written is not None
    assert read["name"] == written["name"]
    assert read["mountPath"] == written["mountPath"]
    assert read["readOnly"] is True
    data_dir = mount_for(shipper, config["data_dir"])
    assert data_dir is not None
    assert not data_dir.get("readOnly")
    # The shipper starts before the gate and stops after it (sidecars stop in reverse order).
    names = [c["name"] for c in spec["initContainers"]]
    assert names.index(SHIPPER) < names.index(GATE)


def test_shipper_graph_and_environment() -> None:
    config = vector_config()
    components = set(config["sources"]) | set(config["transforms"])
    for name, sink in config["sinks"].items():
        assert set(sink["inputs"]) <= components, name
        # Delivery is acknowledged and back-pressured, never dropped when a SIEM is down.
        assert sink["acknowledgements"]["enabled"] is True, name
        assert sink["buffer"]["when_full"] == "block", name
    for name, transform in config["transforms"].items():
        assert set(transform["inputs"]) <= components, name
    assert {s["type"] for s in config["sinks"].values()} == {"elasticsearch", "splunk_hec_logs"}
    elastic = next(s for s in config["sinks"].values() if s["type"] == "elasticsearch")
    assert elastic["data_stream"]["auto_routing"] is False
    # Every variable the configuration names is set in the sidecar's environment.
    text = (VECTOR / "vector.yaml").read_text(encoding="utf-8")
    wanted = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))
    shipper = container(pod_spec(shipping_objects()), SHIPPER)
    assert wanted
    assert wanted <= {e["name"] for e in shipper["env"]}
    assert flag(shipper["args"], "--config") == "/etc/vector/vector.yaml"
    config_mount = mount_for(shipper, "/etc/vector/vector.yaml")
    assert config_mount is not None
    assert config_mount["name"] == "vector-config"


def vrl_program() -> str:
    (transform,) = vector_config()["transforms"].values()
    assert transform["type"] == "remap"
    return cast(str, transform["source"])


def vrl_transform() -> Any:
    """Vector's VRL compiler (pyvrl) on the shipper's program; skip where it is not installed."""
    try:
        from pyvrl import Transform
    except ImportError:  # pragma: no cover - pyvrl has wheels for CPython 3.11 and 3.12
        if IN_CI:
            pytest.fail("pyvrl is not installed (the dev extra installs it)")
        pytest.skip("pyvrl is not installed")
    # pyvrl returns the program's last value, where Vector keeps the event: end on the event.
    return Transform(vrl_program() + "\n.\n")


def test_vrl_program_shapes_an_audit_record() -> None:
    transform = vrl_transform()
    record = {
        "@timestamp": "2026-11-26T10:00:00.250Z",
        "event": {"id": "01a2181536", "action": "deny", "outcome": "failure"},
        "client": {"ip": "203.0.113.7", "geo": {"country_iso_code": "SE"}},
        "gen_ai": {"request": {"model": "aurora-frontier"}},
        "aidr": {"chain": {"sequence": 41, "previous": "ab" * 32}},
    }
    line = json.dumps(record, separators=(",", ":"))
    out = transform.remap(
        {"message": line, "file": audit_file_path(), "host": "model-server-7d9f", "timestamp": "x"}
    )
    digest = hashlib.sha256(line.encode()).hexdigest()
    assert out["event"]["original"] == line
    assert out["event"]["hash"] == digest
    assert out["_id"] == digest
    # The record's own fields arrive untouched.
    assert out["event"]["id"] == "01a2181536"
    assert out["event"]["action"] == "deny"
    assert out["client"] == record["client"]
    assert out["gen_ai"] == record["gen_ai"]
    assert out["aidr"] == record["aidr"]
    assert out["@timestamp"] == record["@timestamp"]
    # The event time is the record's, parsed; the reading host and file are noted.
    assert out["timestamp"] == datetime(2026, 11, 26, 10, 0, 0, 250000, tzinfo=UTC)
    assert out["host"]["name"] == "model-server-7d9f"
    assert out["log"]["file"]["path"] == audit_file_path()
    assert "message" not in out
    assert "file" not in out
    # The Elasticsearch document id is a field the program sets, and the sink reads.
    elastic = next(s for s in vector_config()["sinks"].values() if s["type"] == "elasticsearch")
    assert elastic["id_key"] == "_id"


@pytest.mark.parametrize(
    "line",
    ['{"event": {"id": "torn', "not json at all", "[1, 2, 3]", '"a string"'],
    ids=["torn-write", "text", "json-array", "json-string"],
)
def test_vrl_program_keeps_lines_that_are_not_records(line: str) -> None:
    out = vrl_transform().remap({"message": line, "file": audit_file_path(), "host": "h"})
    assert out["tags"] == ["aidr_gate_unparsed"]
    assert out["message"] == line
    assert out["event"]["original"] == line
    assert out["event"]["hash"] == hashlib.sha256(line.encode()).hexdigest()
    assert out["error"]["message"]
    # No parsable time in it: the read time stands in, so Elasticsearch still accepts it.
    assert isinstance(out["timestamp"], datetime)


def test_vrl_compiler_rejects_an_unhandled_error() -> None:
    """The compile step above has teeth: VRL refuses a fallible call left unhandled."""
    transform = vrl_transform()
    with pytest.raises(ValueError, match="E103"):
        type(transform)(vrl_program().replace("string!(.message)", "string(.message)", 1) + "\n.")


def test_readme_commands_name_real_paths() -> None:
    """Paths the README tells people to build and apply exist."""
    readme = README.read_text(encoding="utf-8")
    for command in ("docker build -f deploy/Dockerfile", "kubectl apply -k deploy/kubernetes"):
        assert command in readme
    for path in re.findall(r"kubectl apply -k ([\w./-]+)", readme):
        assert (ROOT / path / "kustomization.yaml").is_file(), path
