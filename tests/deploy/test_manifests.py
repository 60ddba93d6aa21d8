"""deploy/ checked without a cluster or a Docker engine, and without the network.

Schemas come from dev dependencies installed with the lock file, so nothing is fetched at test
time: the Compose Specification's JSON schema as vendored by `check-jsonschema`
(check_jsonschema/builtin_schemas/vendor/compose-spec.json), and Kubernetes' own schemas as
shipped by `kubernetes-validate` (strict variants: unknown fields fail). The CRDs (KEDA's
ScaledObject and TriggerAuthentication, the RabbitMQ Cluster Operator's RabbitmqCluster) are
checked against small hand-written schemas in tests/deploy/schemas/, derived from their CRD
docs and strict on the fields we use. Beyond the schemas: probes on the right port and path,
every production setting present, secrets and queues that exist, and definitions.json equal
to the code's topology.
"""

from __future__ import annotations

import copy
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import shared.topology as topology
import yaml
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSION = "1.31"

# service → (its port variable, the Settings field behind it)
PORTS = {
    "api": ("API_PORT", "api_port"),
    "orchestrator": ("ORCHESTRATOR_METRICS_PORT", "metrics_port_orchestrator"),
    "worker": ("WORKER_METRICS_PORT", "metrics_port_worker"),
    "notifier": ("NOTIFIER_METRICS_PORT", "metrics_port_notifier"),
}
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.json",
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmqcluster.json",
}
# Settings without a default that production may leave out, and why.
NOT_NEEDED_IN_PRODUCTION = {
    "R2_ACCOUNT_ID": "the seed's R2 alias; S3_ENDPOINT_URL names any S3-compatible endpoint",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "OTEL_EXPORTER_OTLP_ENDPOINT names the collector; "
    "this one overrides it for traces only",
}


# --- Compose ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _compose_validator() -> jsonschema.protocols.Validator:
    vendored = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(vendored.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    validator = _compose_validator()
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"  # a typo the schema catches
    assert not validator.is_valid(broken)


def test_compose_without_profile_is_postgres_and_rabbitmq(compose: dict[str, Any]) -> None:
    """`docker compose -f deploy/compose.yaml up -d` must keep working for `make run` alone."""
    services = compose["services"]
    default = {name for name, s in services.items() if not s.get("profiles")}
    assert default == {"postgres", "rabbitmq", "rabbitmq-setup"}
    for name in default:
        assert set(services[name].get("depends_on", {})) <= default, name
    assert "127.0.0.1:5432:5432" in services["postgres"]["ports"]
    assert "127.0.0.1:5672:5672" in services["rabbitmq"]["ports"]
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.10-management")
    assert services["postgres"]["image"] == "postgres:15"


def test_compose_app_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    setup_env = services["rabbitmq-setup"]["environment"]
    mounts = services["rabbitmq-setup"]["volumes"]
    for mount in mounts:
        assert (DEPLOY / mount.split(":")[0]).exists(), mount
    for name in ("minio", "minio-setup", "jaeger"):
        assert services[name]["profiles"] == ["app"]
    for name, (port_env, _) in PORTS.items():
        svc = services[name]
        assert svc["profiles"] == ["app"]
        assert (
            ROOT / svc["build"]["context"].replace("..", ".") / svc["build"]["dockerfile"]
        ).exists()
        env = svc["environment"]
        port = env.get(port_env, "8000")
        assert f"127.0.0.1:{port}/readyz" in " ".join(svc["healthcheck"]["test"])
        # Each service as its own RabbitMQ user, with the password rabbitmq-setup gives it.
        user = topology.user_name(name)
        password_var = topology.password_env(name)
        assert env["AMQP_URL"].startswith(f"amqp://{user}:${{{password_var}:-")
        assert setup_env[password_var].startswith(f"${{{password_var}:-")
        for dep, cond in svc["depends_on"].items():
            assert dep in services, dep
            assert cond["condition"] in (
                "service_healthy",
                "service_started",
                "service_completed_successfully",
            )
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["rabbitmq-setup"]["condition"] == "service_completed_successfully"
        if name != "api":
            assert env["METRICS_HOST"] == "0.0.0.0"


# --- Kubernetes --------------------------------------------------------------------------------


def _k8s_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def resources(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for name in kustomization["resources"] for d in _k8s_docs(K8S / name)]


@pytest.fixture(scope="module")
def secrets() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["stringData"] for d in _k8s_docs(K8S / "secrets.example.yaml")}


def _by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in resources if d["kind"] == kind}


def test_kustomization_lists_every_manifest(kustomization: dict[str, Any]) -> None:
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert listed == on_disk


def _validate(doc: dict[str, Any]) -> None:
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is None:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return
    schema = json.loads((SCHEMAS / crd).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


def test_manifests_match_their_schemas(
    resources: list[dict[str, Any]], secrets: dict[str, Any]
) -> None:
    kinds = set()
    for doc in [*resources, *_k8s_docs(K8S / "secrets.example.yaml")]:
        _validate(doc)
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Ingress"} <= kinds
    assert {"ScaledObject", "TriggerAuthentication", "RabbitmqCluster"} <= kinds


def test_rabbitmq_override_is_a_valid_pod_template(resources: list[dict[str, Any]]) -> None:
    cluster = next(d for d in resources if d["kind"] == "RabbitmqCluster")
    assert cluster["spec"]["replicas"] == 3
    statefulset: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "override"},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "serviceName": "x",
            **cluster["spec"]["override"]["statefulSet"]["spec"],
        },
    }
    kubernetes_validate.validate(statefulset, K8S_VERSION, strict=True)
    mounts = statefulset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    path = mounts[0]["mountPath"]
    assert (
        f"load_definitions = {path}/definitions.json"
        in cluster["spec"]["rabbitmq"]["additionalConfig"]
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always"),
        lambda d: d["spec"].update(replicas="two"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].pop(
            "port"
        ),
    ],
    ids=["unknown-field", "wrong-type", "missing-required"],
)
def test_schema_check_catches_broken_manifests(
    resources: list[dict[str, Any]], mutate: Any
) -> None:
    broken = copy.deepcopy(_by_kind(resources, "Deployment")["reelflow-api"])
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_crd_schemas_catch_typos(resources: list[dict[str, Any]]) -> None:
    scaled = copy.deepcopy(_by_kind(resources, "ScaledObject")["reelflow-worker"])
    scaled["spec"]["triggers"][0]["metadata"]["queueNmae"] = "worker.render"
    with pytest.raises(jsonschema.ValidationError):
        _validate(scaled)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def test_one_deployment_per_service_with_probes_on_its_port(
    resources: list[dict[str, Any]],
) -> None:
    deployments = _by_kind(resources, "Deployment")
    config = _by_kind(resources, "ConfigMap")["reelflow-config"]["data"]
    assert set(deployments) == {f"reelflow-{s}" for s in PORTS}
    for service, (port_env, field) in PORTS.items():
        c = _container(deployments[f"reelflow-{service}"])
        assert c["args"] == ["reelflow", service]
        assert c["image"] == f"reelflow/{service}"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        default = Settings.model_fields[field].default
        assert int(config[port_env]) == default
        for probe, path in (
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
            ("startupProbe", "/healthz"),
        ):
            get = c[probe]["httpGet"]
            assert get["path"] == path, (service, probe)
            assert ports[get["port"]] == default, (service, probe)
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # In a container the services must listen beyond loopback.
    assert config["API_HOST"] == config["METRICS_HOST"] == "0.0.0.0"


def _env_names(resources: list[dict[str, Any]]) -> dict[str, set[str]]:
    config = _by_kind(resources, "ConfigMap")
    names: dict[str, set[str]] = {}
    for name, d in _by_kind(resources, "Deployment").items():
        c = _container(d)
        found = {e["name"] for e in c.get("env", [])}
        for source in c.get("envFrom", []):
            found |= set(config[source["configMapRef"]["name"]]["data"])
        names[name.removeprefix("reelflow-")] = found
    return names


def _env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    choices = getattr(alias, "choices", None)
    return str(choices[0] if choices else alias)


def test_every_setting_without_a_default_is_configured(resources: list[dict[str, Any]]) -> None:
    """A Settings field with no default (and the broker and database, whose defaults point at
    localhost) must be set for production; a new one fails here until deploy/ sets it."""
    needed = {
        _env_name(f)
        for f, info in Settings.model_fields.items()
        if info.default is None and info.default_factory is None
    }
    needed = needed - set(NOT_NEEDED_IN_PRODUCTION) | {"DATABASE_URL", "AMQP_URL"}
    names = _env_names(resources)
    configured = set().union(*names.values())
    assert needed - configured == set(), "settings missing from deploy/k8s"
    for service, found in names.items():
        assert {"DATABASE_URL", "AMQP_URL", "MEDIA_SIGNING_KEY"} <= found, service


def test_secrets_referenced_exist_with_their_keys(
    resources: list[dict[str, Any]], secrets: dict[str, dict[str, str]]
) -> None:
    refs = []
    for d in [*_by_kind(resources, "Deployment").values(), *_by_kind(resources, "Job").values()]:
        for e in d["spec"]["template"]["spec"]["containers"][0].get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.append((ref["name"], ref["key"]))
    for t in _by_kind(resources, "TriggerAuthentication").values():
        refs += [(r["name"], r["key"]) for r in t["spec"]["secretTargetRef"]]
    assert refs
    for name, key in refs:
        assert key in secrets.get(name, {}), f"secret {name} has no key {key}"
    amqp = {
        c["name"]: e["valueFrom"]["secretKeyRef"]["key"]
        for d in _by_kind(resources, "Deployment").values()
        for c in [_container(d)]
        for e in c["env"]
        if e["name"] == "AMQP_URL"
    }
    assert amqp == {s: s for s in PORTS}  # each service its own user
    for service in PORTS:
        assert secrets["reelflow-amqp"][service].startswith(
            f"amqp://{topology.user_name(service)}:"
        )


def test_services_and_disruption_budgets_select_their_pods(
    resources: list[dict[str, Any]],
) -> None:
    deployments = _by_kind(resources, "Deployment")
    services = _by_kind(resources, "Service")
    budgets = _by_kind(resources, "PodDisruptionBudget")
    for name, d in deployments.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert services[name]["spec"]["selector"].items() <= labels.items()
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        target = services[name]["spec"]["ports"][0]["targetPort"]
        assert target in {p["name"] for p in _container(d)["ports"]}
    assert "reelflow-rabbitmq" in budgets
    ingress = next(iter(_by_kind(resources, "Ingress").values()))
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "reelflow-api"
    assert backend["port"]["name"] in {p["name"] for p in services["reelflow-api"]["spec"]["ports"]}


def test_worker_and_notifier_scale_on_their_queues(resources: list[dict[str, Any]]) -> None:
    deployments = _by_kind(resources, "Deployment")
    scaled = _by_kind(resources, "ScaledObject")
    auth = _by_kind(resources, "TriggerAuthentication")
    queues = {
        name: {t["metadata"]["queueName"] for t in s["spec"]["triggers"]}
        for name, s in scaled.items()
    }
    assert queues == {
        "reelflow-worker": {topology.WORKER_RENDER.name},
        "reelflow-notifier": {topology.NOTIFIER_EVENTS.name, topology.NOTIFIER_DELIVERIES.name},
    }
    for name, s in scaled.items():
        assert s["spec"]["scaleTargetRef"]["name"] in deployments
        # KEDA owns the replica count: a fixed one would fight it on every apply.
        assert "replicas" not in deployments[name]["spec"]
        assert s["spec"]["minReplicaCount"] >= 1  # the PDB needs a pod to protect
        for t in s["spec"]["triggers"]:
            assert t["type"] == "rabbitmq" and t["authenticationRef"]["name"] in auth


# --- RabbitMQ definitions ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def definitions() -> dict[str, Any]:
    return json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())


def test_definitions_match_the_topology(definitions: dict[str, Any]) -> None:
    assert definitions == topology.definitions(), (
        "deploy/rabbitmq/definitions.json drifted from shared/topology.py: run `make definitions`"
    )


def test_every_work_queue_has_its_dead_letter_queue(definitions: dict[str, Any]) -> None:
    queues = {q["name"]: q for q in definitions["queues"]}
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in definitions["bindings"]}
    for q in topology.WORK_QUEUES:
        args = queues[q.name]["arguments"]
        assert args["x-queue-type"] == "quorum" and queues[q.name]["durable"]
        assert args["x-dead-letter-exchange"] == topology.DEAD_LETTERS
        assert args["x-dead-letter-routing-key"] == q.name
        assert args["x-dead-letter-strategy"] == "at-least-once"
        assert q.dlq in queues and queues[q.dlq]["arguments"]["x-queue-type"] == "quorum"
        assert (topology.DEAD_LETTERS, q.dlq, q.name) in bindings


def test_definitions_carry_users_but_no_passwords(definitions: dict[str, Any]) -> None:
    users = {u["name"]: u for u in definitions["users"]}
    assert set(users) == {topology.user_name(s) for s in topology.SERVICES}
    assert "guest" not in users
    assert all(u["password_hash"] == "" and u["tags"] == [] for u in users.values())
    perms = {p["user"]: p for p in definitions["permissions"]}
    topic = {p["user"]: p for p in definitions["topic_permissions"]}
    assert set(perms) == set(topic) == set(users)


def test_passwords_are_hashed_the_way_rabbitmq_checks_them() -> None:
    """rabbit_password_hashing_sha256: base64(salt ‖ sha256(salt ‖ password))."""
    import base64
    import hashlib

    encoded = topology.password_hash("s3cret", salt=b"\x01\x02\x03\x04")
    raw = base64.b64decode(encoded)
    assert raw[:4] == b"\x01\x02\x03\x04"
    assert raw[4:] == hashlib.sha256(b"\x01\x02\x03\x04s3cret").digest()
    generated = topology.definitions(passwords={"worker": "pw"})
    hashes = {u["name"]: u["password_hash"] for u in generated["users"]}
    # Stored as the hash of "pw" under a salt of its own, never as "pw" (a substring check
    # failed about once in a hundred runs: a random base64 hash can contain "pw").
    worker = base64.b64decode(hashes["reelflow-worker"])
    assert len(worker) == 4 + 32 and worker[4:] == hashlib.sha256(worker[:4] + b"pw").digest()
    assert hashes["reelflow-api"] == ""
