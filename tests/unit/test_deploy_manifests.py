"""deploy/rfc-serve.yaml: valid Kubernetes objects (kubernetes-validate's bundled OpenAPI
schemas, strict: unknown fields refused, offline), and consistent with `rfc serve`: the probes
are the server's /health and /ready, the grace period covers --shutdown-timeout plus the 5 s
for last bytes, every flag the manifest passes exists, and the Service and the
PodDisruptionBudget select the Deployment's pods."""

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml not installed (pip install pyyaml)")

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "rfc-serve.yaml"
# the server's last-bytes allowance after --shutdown-timeout (docs/security.md, "Shutdown")
LAST_BYTES_S = 5


def docs() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def test_every_object_validates_against_the_kubernetes_schemas():
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install kubernetes-validate)"
    )
    version = kv.latest_version()
    objects = docs()
    assert set(objects) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    for obj in objects.values():
        kv.validate(obj, version, strict=True)


def test_a_wrong_field_is_caught():
    """The validator is not a no-op: a misspelt probe field fails it."""
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install kubernetes-validate)"
    )
    deployment = docs()["Deployment"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGett"] = {"path": "/ready", "port": 8080}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, kv.latest_version(), strict=True)


def serve_container() -> dict:
    (container,) = [c for c in docs()["Deployment"]["spec"]["template"]["spec"]["containers"] if c["name"] == "serve"]
    return container


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_probes_are_the_servers():
    c = serve_container()
    port = int(flag(c["command"], "--port"))
    assert c["ports"][0]["containerPort"] == port
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["startupProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == c["ports"][0]["name"]


def test_grace_period_matches_the_shutdown_timeout():
    spec = docs()["Deployment"]["spec"]["template"]["spec"]
    drain = float(flag(serve_container()["command"], "--shutdown-timeout"))
    assert drain + LAST_BYTES_S <= spec["terminationGracePeriodSeconds"] <= drain + LAST_BYTES_S + 10


def test_the_bundle_is_pulled_and_its_signature_required():
    spec = docs()["Deployment"]["spec"]["template"]["spec"]
    c = serve_container()
    assert c["command"][:3] == ["rfc", "serve", "$(RFC_MODEL_REF)"]
    key = flag(c["command"], "--require-signature")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert key.startswith(mounts["trust"] + "/")
    (pull,) = spec["initContainers"]
    assert pull["command"][:3] == ["rfc", "pull", "$(RFC_MODEL_REF)"]
    assert flag(pull["command"], "--cache-dir") == flag(c["command"], "--cache-dir")
    assert "@sha256:" in docs()["ConfigMap"]["data"]["RFC_MODEL_REF"]  # pinned by digest


def test_every_flag_is_one_rfc_serve_has():
    from click.testing import CliRunner

    from rfc.cli.serve_cmd import serve_cmd

    help_text = CliRunner().invoke(serve_cmd, ["--help"]).output
    for word in serve_container()["command"][3:]:
        if word.startswith("--"):
            assert word in help_text, word


def test_service_and_budget_select_the_pods():
    objects = docs()
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == serve_container()["ports"][0]["name"]
    assert objects["Deployment"]["spec"]["replicas"] > objects["PodDisruptionBudget"]["spec"]["maxUnavailable"]


HPA = ROOT / "deploy" / "rfc-hpa.yaml"


def hpa() -> dict:
    (obj,) = [d for d in yaml.safe_load_all(HPA.read_text()) if d]
    return obj


def test_the_autoscaler_validates_and_scales_the_deployment_on_its_queue():
    """deploy/rfc-hpa.yaml: a valid autoscaling/v2 HorizontalPodAutoscaler (strict) of the
    Deployment, on the queue gauge that rfc serve exports, never below what the
    PodDisruptionBudget needs to leave one replica serving."""
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install kubernetes-validate)"
    )
    obj = hpa()
    kv.validate(obj, kv.latest_version(), strict=True)
    deployment = docs()["Deployment"]
    target = obj["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = obj["spec"]["metrics"]
    from rfc.runtime.server.metrics import PREFIX, _GAUGES

    assert metric["pods"]["metric"]["name"] in {PREFIX + name for name, _, _ in _GAUGES}
    assert obj["spec"]["minReplicas"] > docs()["PodDisruptionBudget"]["spec"]["maxUnavailable"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]  # what Prometheus scrapes
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == int(flag(serve_container()["command"], "--port"))
    assert "--public-metrics" in serve_container()["command"]  # Prometheus sends no API key


def test_a_wrong_autoscaler_field_is_caught():
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install kubernetes-validate)"
    )
    obj = hpa()
    obj["spec"]["metrics"][0]["pods"]["target"]["averageValu"] = "4"
    with pytest.raises(kv.ValidationError):
        kv.validate(obj, kv.latest_version(), strict=True)
