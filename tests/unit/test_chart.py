"""The Helm chart (charts/msm), linted and rendered by the real Helm SDK.

Helm itself runs in-process: helm-python-sdk binds Helm v4's Go SDK (libhelm_c.so, shipped
in its wheel) with ctypes, so `lint` is `helm lint --strict` and `Chart.render` is
`helm template` (offline: `lookup` finds nothing, so the self-signed certificate is fresh).
Every rendered object is then checked against the Kubernetes OpenAPI schemas with
kubernetes-validate in strict mode (unknown fields are errors), for the oldest Kubernetes the
chart supports and a recent one.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) renders the chart")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (test extra)")

CHART = Path(__file__).resolve().parents[2] / "charts" / "msm"
RELEASE = "msm"
NAMESPACE = "msm-system"
# The chart's kubeVersion floor (Chart.yaml) and a recent release (or the newest this
# kubernetes-validate has strict schemas for, if older).
RECENT = min("1.34", kubernetes_validate.latest_version(), key=lambda v: tuple(map(int, v.split(".")[:2])))
KUBE_VERSIONS = ("1.28", RECENT)
CONTROL_PLANE = f"msm-control-plane.{NAMESPACE}.svc:9000"
BOOTSTRAP = f"msm-control-plane.{NAMESPACE}.svc:9002"
INJECT_KEY = "sidecar.mediastreamingmesh.io/inject"

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager-fail": {"certManager": {"enabled": True}, "webhook": {"failurePolicy": "Fail"}},
}

Obj = dict[str, Any]


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE) -> tuple[list[Obj], str]:
    """`helm template <name> charts/msm -n msm-system -f values`: the objects, and NOTES.txt."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=name, namespace=NAMESPACE, is_install=True)
    objects: list[Obj] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects, notes


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {config: render(values)[0] for config, values in CONFIGS.items()}


@pytest.fixture(scope="module")
def default(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["default"]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def container(workload: Obj) -> Obj:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def env(c: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def container_ports(c: Obj) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def webhook_entry(objects: list[Obj]) -> Obj:
    (entry,) = find(objects, "MutatingWebhookConfiguration", "msm-webhook")["webhooks"]
    return entry


# --- lint and schema validation ---------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_helm_lint_strict_is_clean(config: str) -> None:
    report = helm.lint(CHART, CONFIGS[config], strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSIONS[-1]}.0")
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def check_cert_manager_object(obj: Obj) -> None:
    """cert-manager's CRDs are not in the core schemas kubernetes-validate ships; check the
    fields this chart uses against cert-manager.io/v1 by hand."""
    assert obj["apiVersion"] == "cert-manager.io/v1"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["namespace"] == NAMESPACE
    spec = obj["spec"]
    if obj["kind"] == "Issuer":
        assert spec == {"selfSigned": {}}
    elif obj["kind"] == "Certificate":
        assert set(spec) <= {
            "secretName",
            "commonName",
            "dnsNames",
            "duration",
            "renewBefore",
            "privateKey",
            "usages",
            "issuerRef",
        }
        assert isinstance(spec["secretName"], str) and spec["secretName"]
        assert all(isinstance(n, str) and n for n in spec["dnsNames"])
        assert set(spec["issuerRef"]) <= {"name", "kind", "group"} and spec["issuerRef"]["name"]
        assert spec["privateKey"]["algorithm"] in {"RSA", "ECDSA", "Ed25519"}
        assert spec["privateKey"]["rotationPolicy"] in {"Never", "Always"}
        assert set(spec["usages"]) <= {"server auth", "digital signature", "key encipherment"}
        for field in ("duration", "renewBefore"):
            assert spec[field].endswith(("h", "m", "s"))
    else:
        raise AssertionError(f"unexpected cert-manager kind {obj['kind']}")


@pytest.mark.parametrize("config", CONFIGS)
def test_every_object_is_valid_kubernetes(rendered: dict[str, list[Obj]], config: str) -> None:
    objects = rendered[config]
    assert objects
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), "duplicate objects"
    failures = []
    for obj in objects:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            check_cert_manager_object(obj)  # not a core kind: checked structurally instead
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                failures.append(f"{obj['kind']}/{obj['metadata']['name']} on {version}: {e.message} at {list(e.path)}")
    assert failures == []


def test_the_validation_is_strict(default: list[Obj]) -> None:
    """A misspelt field fails validation: the check above is not vacuous."""
    daemonset = copy.deepcopy(find(default, "DaemonSet", "msm-proxy"))
    daemonset["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBE_VERSIONS[-1], strict=True)


def test_renders_every_component(default: list[Obj]) -> None:
    assert sorted((o["kind"], o["metadata"]["name"]) for o in default) == sorted(
        [
            ("ServiceAccount", "msm-control-plane"),
            ("ClusterRole", "msm-control-plane"),
            ("ClusterRoleBinding", "msm-control-plane"),
            ("Deployment", "msm-control-plane"),
            ("Service", "msm-control-plane"),
            ("ServiceAccount", "msm-proxy"),
            ("DaemonSet", "msm-proxy"),
            ("ServiceAccount", "msm-webhook"),
            ("Deployment", "msm-webhook"),
            ("Service", "msm-webhook"),
            ("Secret", "msm-webhook-tls"),
            ("MutatingWebhookConfiguration", "msm-webhook"),
            ("ServiceAccount", "msm-cni"),
            ("ClusterRole", "msm-cni"),
            ("ClusterRoleBinding", "msm-cni"),
            ("DaemonSet", "msm-cni"),
            ("Secret", "msm-mesh-ca"),
            ("ConfigMap", "msm-trust-bundle"),
            ("NetworkPolicy", "msm-control-plane"),
            ("NetworkPolicy", "msm-webhook"),
        ]
    )
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
    for obj in default:
        assert obj["metadata"].get("namespace") == (None if obj["kind"] in cluster_scoped else NAMESPACE)


@pytest.mark.parametrize("config", CONFIGS)
def test_standard_labels_and_selectors(rendered: dict[str, list[Obj]], config: str) -> None:
    for obj in rendered[config]:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "msm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "msm"
        assert labels["app.kubernetes.io/component"] in {"control-plane", "proxy", "webhook", "cni"}
        if obj["kind"] in {"Deployment", "DaemonSet"}:
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()
            assert "app.kubernetes.io/version" not in selector  # selectors are immutable


# --- the components ------------------------------------------------------------------------------


def test_control_plane(default: list[Obj]) -> None:
    deployment = find(default, "Deployment", "msm-control-plane")
    c = container(deployment)
    assert c["args"][0] == "msm-control-plane"
    assert flag(c["args"], "--listen") == "0.0.0.0:9000"
    assert flag(c["args"], "--web-listen") == "127.0.0.1:8080"   # the page is not on the network by default
    assert c["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert "--kubernetes" in c["args"]
    assert flag(c["args"], "--log-level") == "info"
    assert container_ports(c) == {"grpc": 9000, "bootstrap": 9002, "http": 8080}
    assert flag(c["args"], "--bootstrap-listen") == "0.0.0.0:9002"
    assert "--srtp" in c["args"] and flag(c["args"], "--srtp-rekey") == "3600"
    assert c["image"] == "msm:0.1.0"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "msm-control-plane"
    assert pod["securityContext"]["runAsNonRoot"] is True
    service = find(default, "Service", "msm-control-plane")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "grpc": (9000, "grpc"),
        "bootstrap": (9002, "bootstrap"),
        "http": (8080, "http"),
    }
    # Both gRPC ports are TLS: nothing tells a gateway they are cleartext HTTP/2.
    assert not [p for p in service["spec"]["ports"] if p.get("appProtocol") == "kubernetes.io/h2c"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_proxy_daemonset_is_on_the_host_network(default: list[Obj]) -> None:
    daemonset = find(default, "DaemonSet", "msm-proxy")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["automountServiceAccountToken"] is False  # it never calls the Kubernetes API
    assert pod["tolerations"] == [{"operator": "Exists"}]
    c = container(daemonset)
    args = c["args"]
    assert args[0] == "msm-proxy"
    assert flag(args, "--node") == "$(MSM_NODE_NAME)"
    assert flag(args, "--media-host") == "$(MSM_HOST_IP)"
    assert flag(args, "--listen") == "0.0.0.0:9001"
    assert flag(args, "--metrics-listen") == "0.0.0.0:9090"
    assert flag(args, "--control") == CONTROL_PLANE
    assert flag(args, "--port-range") == "30000-39999"
    assert flag(args, "--log-level") == "info"
    variables = env(c)
    assert variables["MSM_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert variables["MSM_HOST_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert container_ports(c) == {"grpc": 9001, "metrics": 9090, "fabric": 9003}
    # Group frames between the proxies: libfabric at the node's IP on a fixed port.
    assert flag(args, "--fabric-provider") == "tcp;ofi_rxm"
    assert flag(args, "--fabric-address") == "$(MSM_HOST_IP):9003"
    assert [flag(args, f"--fabric-{name}") for name in ("max-frame", "credits", "peers")] == ["8388608", "4", "4"]
    assert "--media-config" not in args and all(v["name"] != "media-config" for v in pod["volumes"])
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("config", CONFIGS)
def test_webhook_configuration(rendered: dict[str, list[Obj]], config: str) -> None:
    objects = rendered[config]
    entry = webhook_entry(objects)
    service_ref = entry["clientConfig"]["service"]
    assert service_ref == {"name": "msm-webhook", "namespace": NAMESPACE, "path": "/mutate", "port": 443}
    assert entry["failurePolicy"] == ("Fail" if config == "cert-manager-fail" else "Ignore")
    assert entry["sideEffects"] == "None"
    assert entry["admissionReviewVersions"] == ["v1"]
    (rule,) = entry["rules"]
    assert rule == {
        "operations": ["CREATE"],
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "resources": ["pods"],
        "scope": "Namespaced",
    }
    (expression,) = entry["namespaceSelector"]["matchExpressions"]
    assert expression["key"] == "kubernetes.io/metadata.name"
    assert expression["operator"] == "NotIn"
    assert set(expression["values"]) == {"kube-system", NAMESPACE}
    assert "objectSelector" not in entry
    (condition,) = entry["matchConditions"]
    assert INJECT_KEY in condition["expression"]

    # The Service behind it reaches the webhook container's 8443.
    service = find(objects, "Service", "msm-webhook")
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (443, "https")
    deployment = find(objects, "Deployment", "msm-webhook")
    c = container(deployment)
    assert container_ports(c) == {"https": 8443}
    args = c["args"]
    assert args[0] == "msm-webhook"
    assert flag(args, "--port") == "8443"
    assert flag(args, "--tls-cert") == "/tls/tls.crt"
    assert flag(args, "--tls-key") == "/tls/tls.key"
    assert flag(args, "--stub-image") == c["image"]  # the stub comes from the same image
    assert flag(args, "--control-plane") == CONTROL_PLANE
    assert flag(args, "--mesh-namespace") == NAMESPACE
    probe = c["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"], probe["scheme"]) == ("/healthz", "https", "HTTPS")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (tls_volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls_volume["secret"]["secretName"] == "msm-webhook-tls"
    assert {"name": "tls", "mountPath": "/tls", "readOnly": True} in c["volumeMounts"]


def test_self_signed_webhook_tls(default: list[Obj]) -> None:
    entry = webhook_entry(default)
    secret = find(default, "Secret", "msm-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    data = secret["data"]
    assert entry["clientConfig"]["caBundle"] == data["ca.crt"]
    ca_pem = base64.b64decode(data["ca.crt"]).decode()
    cert_pem = base64.b64decode(data["tls.crt"]).decode()
    key_pem = base64.b64decode(data["tls.key"]).decode()
    assert ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert cert_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY-----" in key_pem
    assert ca_pem != cert_pem
    # The webhook pods restart when the certificate changes.
    pod_annotations = find(default, "Deployment", "msm-webhook")["spec"]["template"]["metadata"]["annotations"]
    assert pod_annotations["checksum/tls"] == hashlib.sha256(data["tls.crt"].encode()).hexdigest()
    assert "cert-manager.io/inject-ca-from" not in find(default, "MutatingWebhookConfiguration", "msm-webhook")[
        "metadata"
    ].get("annotations", {})


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_self_signed_certificate_verifies_for_the_service(default: list[Obj], tmp_path: Path) -> None:
    data = find(default, "Secret", "msm-webhook-tls")["data"]
    for key in ("ca.crt", "tls.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(data[key]))
    name = f"msm-webhook.{NAMESPACE}.svc"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.crt", "-purpose", "sslserver", "-verify_hostname", name, "tls.crt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_cert_manager_mode(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["cert-manager-fail"]
    # cert-manager writes the webhook's; the mesh CA is the chart's own.
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Secret"] == ["msm-mesh-ca"]
    issuer = find(objects, "Issuer", "msm-webhook-selfsigned")
    certificate = find(objects, "Certificate", "msm-webhook")
    spec = certificate["spec"]
    assert spec["secretName"] == "msm-webhook-tls"
    assert spec["issuerRef"] == {"name": issuer["metadata"]["name"], "kind": "Issuer", "group": "cert-manager.io"}
    assert f"msm-webhook.{NAMESPACE}.svc" in spec["dnsNames"]
    configuration = find(objects, "MutatingWebhookConfiguration", "msm-webhook")
    annotations = configuration["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/msm-webhook"
    assert "caBundle" not in webhook_entry(objects)["clientConfig"]  # injected by cainjector
    pod = find(objects, "Deployment", "msm-webhook")["spec"]["template"]
    assert "checksum/tls" not in pod["metadata"].get("annotations", {})


def test_cert_manager_with_an_existing_issuer() -> None:
    issuer_ref = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    objects, _ = render({"certManager": {"enabled": True, "issuerRef": issuer_ref}})
    assert not [o for o in objects if o["kind"] == "Issuer"]
    assert find(objects, "Certificate", "msm-webhook")["spec"]["issuerRef"] == issuer_ref


def test_cni_installer(default: list[Obj]) -> None:
    daemonset = find(default, "DaemonSet", "msm-cni")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["serviceAccountName"] == "msm-cni"
    c = container(daemonset)
    assert c["securityContext"]["privileged"] is True
    assert c["args"][:2] == ["msm-cni", "install"]
    args = c["args"]
    # The paths the installer is given end up in files the host reads (the plugin launcher,
    # the conflist's kubeconfig entry), so each host directory is mounted at its own path.
    assert flag(args, "--cni-bin-dir") == "/opt/cni/bin"
    assert flag(args, "--cni-conf-dir") == "/etc/cni/net.d"
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == host_paths == {"cni-bin-dir": "/opt/cni/bin", "cni-conf-dir": "/etc/cni/net.d"}
    assert flag(args, "--python") == "/usr/bin/python3"  # a host interpreter, not the image's
    # Redirect tcp/554 to the stub's 8554, except the stub's own (UID 1337) connections.
    assert flag(args, "--intercept-ports") == "554"
    assert flag(args, "--redirect-port") == "8554"
    assert flag(args, "--proxy-uid") == "1337"
    assert flag(args, "--redirect-mode") == "nftables"
    assert flag(args, "--exclude-namespaces") == f"kube-system,{NAMESPACE}"


# --- RBAC ----------------------------------------------------------------------------------------


def rules_of(objects: list[Obj], name: str) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in find(objects, "ClusterRole", name)["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("config", CONFIGS)
def test_rbac_is_least_privilege(rendered: dict[str, list[Obj]], config: str) -> None:
    objects = rendered[config]
    for obj in objects:
        for rule in obj.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{obj['kind']}/{obj['metadata']['name']}: wildcard {field}"
            assert not rule.get("nonResourceURLs")
    assert {o["kind"] for o in objects} & {"Role", "RoleBinding"} == set()
    read = {"get", "list", "watch"}
    assert rules_of(objects, "msm-control-plane") == {
        (group, resource, verb)
        for group, resource in [("", "services"), ("", "pods"), ("", "nodes"), ("discovery.k8s.io", "endpointslices")]
        for verb in read
    } | {("authentication.k8s.io", "tokenreviews", "create"),   # IssueCertificate checks tokens
         ("", "secrets", "get")}      # camera credentials, by name: never list or watch
    assert rules_of(objects, "msm-cni") == {("", "pods", "get")}
    # Each binding grants its role to its component's own ServiceAccount only.
    for name in ("msm-control-plane", "msm-cni"):
        binding = find(objects, "ClusterRoleBinding", name)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
    bound = {o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRoleBinding"}
    assert bound == {"msm-control-plane", "msm-cni"}  # proxy and webhook get no API access


def test_secrets_access_can_be_turned_off() -> None:
    objects, _ = render({"controlPlane": {"cameraCredentials": {"readSecrets": False}}})
    assert not {rule for rule in rules_of(objects, "msm-control-plane") if rule[1] == "secrets"}
    assert ("", "services", "watch") in rules_of(objects, "msm-control-plane")
    with pytest.raises(helm.HelmValuesError):
        render({"controlPlane": {"cameraCredentials": {"readSecrets": "yes"}}})


# --- values --------------------------------------------------------------------------------------


def test_values_flow_into_the_objects() -> None:
    objects, _ = render(
        {
            "image": {"repository": "registry.example/msm", "tag": "1.2.3", "pullPolicy": "Always"},
            "interceptPorts": [554, 8554],
            "portRange": "40000-40999",
            "logLevel": "debug",
            "webhook": {
                "replicas": 2,
                "objectSelector": {"matchLabels": {"mesh": "enabled"}},
                "onlyAnnotatedPods": False,
                "excludeNamespaces": ["kube-system", "monitoring"],
                "namespaceSelectorExpressions": [{"key": "media", "operator": "Exists"}],
            },
            "proxy": {"ports": {"grpc": 9101, "metrics": 9190}, "nodeSelector": {"media": "true"}},
        }
    )
    for obj in objects:
        for version in KUBE_VERSIONS[-1:]:
            kubernetes_validate.validate(obj, version, strict=True)
    webhook = container(find(objects, "Deployment", "msm-webhook"))
    assert webhook["image"] == "registry.example/msm:1.2.3"
    assert flag(webhook["args"], "--stub-image") == "registry.example/msm:1.2.3"
    assert webhook["imagePullPolicy"] == "Always"
    assert flag(webhook["args"], "--log-level") == "debug"
    cni = container(find(objects, "DaemonSet", "msm-cni"))["args"]
    assert flag(cni, "--intercept-ports") == "554,8554"
    assert flag(cni, "--exclude-namespaces") == f"kube-system,monitoring,{NAMESPACE}"
    entry = webhook_entry(objects)
    assert entry["objectSelector"] == {"matchLabels": {"mesh": "enabled"}}
    assert "matchConditions" not in entry
    excluded, extra = entry["namespaceSelector"]["matchExpressions"]
    assert set(excluded["values"]) == {"kube-system", "monitoring", NAMESPACE}
    assert extra == {"key": "media", "operator": "Exists"}
    assert find(objects, "PodDisruptionBudget", "msm-webhook")["spec"]["maxUnavailable"] == 1
    proxy = find(objects, "DaemonSet", "msm-proxy")
    args = container(proxy)["args"]
    assert flag(args, "--port-range") == "40000-40999"
    assert flag(args, "--listen") == "0.0.0.0:9101"
    assert container_ports(container(proxy)) == {"grpc": 9101, "metrics": 9190, "fabric": 9003}
    # Helm merges maps with the defaults (set a key to null to drop it).
    assert proxy["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux", "media": "true"}


def test_release_name_prefixes_every_name() -> None:
    objects, notes = render(name="edge")
    names = {o["metadata"]["name"] for o in objects}
    assert all(n.startswith("edge-msm-") for n in names), names
    proxy = container(find(objects, "DaemonSet", "edge-msm-proxy"))
    assert flag(proxy["args"], "--control") == f"edge-msm-control-plane.{NAMESPACE}.svc:9000"
    assert "edge-msm-control-plane" in notes


def test_components_can_be_disabled() -> None:
    objects, _ = render({"cni": {"enabled": False}, "webhook": {"enabled": False}})
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects}
    assert components == {"control-plane", "proxy"}


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"webhook": {"failurePolicy": "Sometimes"}}, "HelmValuesError"),  # values.schema.json
        ({"portRange": "1-2"}, "HelmValuesError"),
        ({"webhook": {"timeoutSeconds": 60}}, "HelmValuesError"),
        ({"webhok": {}}, "HelmValuesError"),  # a misspelt key is an error, not silently ignored
        ({"portRange": "39999-30000"}, "HelmRenderError"),  # templates' own checks
        ({"controlPlane": {"enabled": False}}, "HelmRenderError"),  # stubs need a control plane
        ({"controlPlane": {"replicas": 2}}, "HelmRenderError"),  # one in-memory control plane
    ],
)
def test_bad_values_are_rejected(values: dict[str, Any], error: str) -> None:
    with pytest.raises(getattr(helm, error)):
        render(values)


def test_more_than_one_control_plane_is_refused_with_the_reason() -> None:
    """The control plane keeps its state in memory in one process: the chart says so rather than
    render a second replica that would split the stubs between two control planes."""
    with pytest.raises(helm.HelmRenderError) as refused:
        render({"controlPlane": {"replicas": 3}})
    message = str(refused.value)
    assert "controlPlane.replicas must be 0 or 1" in message
    assert "in memory" in message
    for replicas in (0, 1):
        objects, _ = render({"controlPlane": {"replicas": replicas}})
        assert find(objects, "Deployment", "msm-control-plane")["spec"]["replicas"] == replicas


def test_the_chart_promises_nothing_that_is_not_built() -> None:
    """No value, template or note offers a store or encryption the mesh does not have (there is
    no etcd store, no SRTP to viewers); the README says plainly what is missing."""
    said = "\n".join(
        path.read_text().lower()
        for path in [CHART / "values.yaml", CHART / "values.schema.json", *sorted((CHART / "templates").iterdir())]
    )
    for claim in ("etcd", "embedded store", "srtp to viewers", "encrypted to viewers"):
        assert claim not in said, claim
    readme = " ".join((CHART / "README.md").read_text().split())
    assert "## What is not there yet" in readme
    for fact in ("RTP to viewers is not encrypted", "One control plane replica, state in memory",
                 "no shared store and no leader election", "No loss repair"):
        assert fact in readme, fact


def test_notes_explain_how_to_mesh_a_pod() -> None:
    _, notes = render()
    assert f'"{INJECT_KEY}":"true"' in notes
    assert "failurePolicy is Ignore" in notes
    _, notes = render({"webhook": {"failurePolicy": "Fail"}})
    assert "failurePolicy is Ignore" not in notes


def test_documented_values_match_the_chart() -> None:
    """Every key of values.yaml appears in the README's values table."""
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # Maps passed through to Kubernetes as they are: documented as one key.
    passthrough = {
        "resources",
        "nodeSelector",
        "affinity",
        "podAnnotations",
        "podSecurityContext",
        "securityContext",
        "strategy",
        "updateStrategy",
        "issuerRef",
        "objectSelector",
        "annotations",
    }

    def keys(prefix: str, node: Any) -> Iterator[str]:
        for key, child in node.items():
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(child, dict) and child and key not in passthrough:
                yield from keys(path, child)
            else:
                yield path

    missing = [key for key in keys("", values) if f"| `{key}` |" not in readme]
    assert missing == []


# --- the command lines against the programs ------------------------------------------------------


def test_command_lines_parse_with_the_real_programs(default: list[Obj]) -> None:
    """Each container's args name an installed console script and parse with its own parser."""
    from msm.cni_plugin import installer
    from msm.control_plane import main as control_plane_main
    from msm.rtp_proxy import main as proxy_main
    from msm.webhook import main as webhook_main
    from msm.webhook.review import InjectConfig

    scripts = tomllib.loads((CHART.parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    downward = {"$(MSM_NODE_NAME)": "node-a", "$(MSM_HOST_IP)": "192.0.2.7"}
    commands = {}
    for kind, name in [
        ("Deployment", "msm-control-plane"),
        ("DaemonSet", "msm-proxy"),
        ("Deployment", "msm-webhook"),
        ("DaemonSet", "msm-cni"),
    ]:
        program, *args = container(find(default, kind, name))["args"]
        assert program in scripts
        commands[program] = [downward.get(a, a) for a in args]

    opts = control_plane_main.parse_args(commands["msm-control-plane"])
    assert (opts.listen, opts.web_listen, opts.kubernetes) == ("0.0.0.0:9000", "127.0.0.1:8080", True)
    assert (opts.ca_dir, opts.insecure, opts.bootstrap_listen) == ("/etc/msm/ca", False, "0.0.0.0:9002")
    assert (opts.trust_domain, opts.srtp, opts.srtp_rekey) == ("cluster.local", True, 3600.0)
    control_plane_main.planner_settings(opts)
    assert opts.proxy_service_account == [f"{NAMESPACE}/msm-proxy"]
    control_plane_main.check_tls_arguments(opts, also="--ca-dir")
    opts = proxy_main.parse_args(commands["msm-proxy"])
    assert (opts.node, opts.media_host, opts.control) == ("node-a", "192.0.2.7", CONTROL_PLANE)
    assert (opts.token_file, opts.trust_bundle, opts.insecure, opts.bootstrap) == (
        "/var/run/secrets/msm/token/token", "/etc/msm/trust/ca.pem", False, BOOTSTRAP)
    assert opts.media_dir == "/run/msm/media"
    proxy_main.check_tls_arguments(opts)
    fabric = proxy_main.fabric_settings(proxy_main.parse_args(
        [a.replace("$(MSM_HOST_IP)", "192.0.2.7") for a in commands["msm-proxy"]]))
    assert fabric == proxy_main.FabricSettings(["tcp;ofi_rxm"], "192.0.2.7", 9003, 8 << 20, 4, 4)
    values = webhook_main.settings(webhook_main.build_parser().parse_args(commands["msm-webhook"]), {})
    config = InjectConfig(
        stub_image=values["stub_image"],
        control_plane=values["control_plane"],
        bootstrap=values["bootstrap"],
        mesh_namespace=values["mesh_namespace"],
    )
    assert config.bootstrap == BOOTSTRAP   # the injected stubs ask there
    assert webhook_main.inject_config({**values, "trust_bundle": ""}).media_gid == 10001   # the proxy's group
    assert values["port"] == "8443"
    action, options, _ = installer.parse_args(commands["msm-cni"])
    assert action == "install"
    assert options.plugin_conf["interceptPorts"] == [554]
    assert options.plugin_conf["redirectPort"] == 8554
    assert options.plugin_conf["proxyUid"] == 1337
    assert options.plugin_conf["excludeNamespaces"] == ["kube-system", NAMESPACE]
    assert str(options.kubeconfig_out).startswith("/etc/cni/net.d/")  # a host path


# --- identity, hardening -------------------------------------------------------------------------


def test_the_mesh_ca_is_mounted_into_the_control_plane_only(default: list[Obj]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    secret = find(default, "Secret", "msm-mesh-ca")
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca-cert.pem"]))
    key = serialization.load_pem_private_key(base64.b64decode(secret["data"]["ca-key.pem"]), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.public_key() == cert.public_key()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    bundle = find(default, "ConfigMap", "msm-trust-bundle")["data"]["ca.pem"]
    assert x509.load_pem_x509_certificate(bundle.encode()) == cert and "PRIVATE" not in bundle
    mounting = [o["metadata"]["name"] for o in default if o["kind"] in {"Deployment", "DaemonSet"}
                and any((v.get("secret") or {}).get("secretName") == "msm-mesh-ca"
                        for v in o["spec"]["template"]["spec"].get("volumes", []))]
    assert mounting == ["msm-control-plane"]
    cp = container(find(default, "Deployment", "msm-control-plane"))
    assert flag(cp["args"], "--ca-dir") == "/etc/msm/ca" and flag(cp["args"], "--trust-domain") == "cluster.local"


def test_proxies_bootstrap_with_a_projected_token(default: list[Obj]) -> None:
    pod = find(default, "DaemonSet", "msm-proxy")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (source,) = volumes["msm-token"]["projected"]["sources"]
    assert source == {"serviceAccountToken": {"audience": "msm", "expirationSeconds": 600, "path": "token"}}
    assert volumes["msm-trust"]["configMap"]["name"] == "msm-trust-bundle"
    assert volumes["msm-tls"]["emptyDir"]["medium"] == "Memory"
    args = container(find(default, "DaemonSet", "msm-proxy"))["args"]
    assert "--insecure" not in args and flag(args, "--tls-dir") == "/var/run/secrets/msm/tls"
    webhook = container(find(default, "Deployment", "msm-webhook"))
    assert flag(webhook["args"], "--trust-bundle") == "/etc/msm/trust/ca.pem"


def test_network_policies(default: list[Obj]) -> None:
    cp = find(default, "NetworkPolicy", "msm-control-plane")["spec"]
    assert cp["podSelector"]["matchLabels"] == find(default, "Deployment", "msm-control-plane")["spec"]["selector"][
        "matchLabels"]
    assert cp["policyTypes"] == ["Ingress"]
    # gRPC and the certificate bootstrap port only; the web port is not admitted (it listens on
    # loopback anyway).
    assert [[p["port"] for p in rule["ports"]] for rule in cp["ingress"]] == [[9000, 9002]]
    wh = find(default, "NetworkPolicy", "msm-webhook")["spec"]
    assert [[p["port"] for p in rule["ports"]] for rule in wh["ingress"]] == [[8443]]
    objects, _ = render({"networkPolicy": {"nodeCIDRs": ["192.0.2.0/24"], "apiServerCIDRs": ["198.51.100.1/32"]},
                         "controlPlane": {"web": {"expose": True}}})
    cp = find(objects, "NetworkPolicy", "msm-control-plane")["spec"]
    assert cp["ingress"][0]["from"] == [{"namespaceSelector": {}}, {"ipBlock": {"cidr": "192.0.2.0/24"}}]
    assert cp["ingress"][1]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert find(objects, "NetworkPolicy", "msm-webhook")["spec"]["ingress"][0]["from"] == [
        {"ipBlock": {"cidr": "198.51.100.1/32"}}]
    c = container(find(objects, "Deployment", "msm-control-plane"))
    assert flag(c["args"], "--web-listen") == "0.0.0.0:8080" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for obj in objects:
        if obj["kind"] == "NetworkPolicy":
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)
    objects, _ = render({"networkPolicy": {"enabled": False}})
    assert not [o for o in objects if o["kind"] == "NetworkPolicy"]


def test_insecure_is_explicit_and_everywhere() -> None:
    objects, _ = render({"mesh": {"insecure": True}})
    cp = container(find(objects, "Deployment", "msm-control-plane"))
    assert "--insecure" in cp["args"] and "--bootstrap-listen" not in cp["args"] and "bootstrap" not in \
        container_ports(cp)
    assert [p["name"] for p in find(objects, "Service", "msm-control-plane")["spec"]["ports"]] == ["grpc", "http"]
    assert [[p["port"] for p in rule["ports"]] for rule in find(objects, "NetworkPolicy", "msm-control-plane")[
        "spec"]["ingress"]] == [[9000]]
    assert "--insecure" in container(find(objects, "DaemonSet", "msm-proxy"))["args"]
    assert "--insecure-stubs" in container(find(objects, "Deployment", "msm-webhook"))["args"]
    assert not [v for v in find(objects, "DaemonSet", "msm-proxy")["spec"]["template"]["spec"]["volumes"]
                if v["name"].startswith("msm-")]


def test_the_control_plane_loads_the_ca_helm_made(default: list[Obj], tmp_path: Path) -> None:
    """The Secret's CA as Helm rendered it (genCAWithKey: a CN only, no trust domain in it) loads
    with the chart's --trust-domain, signs a workload certificate, and says what is missing
    without it."""
    from msm.control_plane import main as control_plane_main
    from msm.security.bootstrap import new_key_and_csr
    from msm.security.ca import CaError, CertificateAuthority
    from msm.security.identity import Identity, Role

    secret = find(default, "Secret", "msm-mesh-ca")
    for name in ("ca-cert.pem", "ca-key.pem"):
        (tmp_path / name).write_bytes(base64.b64decode(secret["data"][name]))
    args = container(find(default, "Deployment", "msm-control-plane"))["args"][1:]
    opts = control_plane_main.parse_args(args)
    ca = CertificateAuthority.load(tmp_path, opts.trust_domain)
    assert ca.trust_domain == "cluster.local"
    ca.sign_csr(new_key_and_csr()[1], Identity("cluster.local", "media", "default", Role.STUB, "camera-0"))
    with pytest.raises(CaError, match="names no trust domain"):
        CertificateAuthority.load(tmp_path)


def test_srtp_between_nodes_follows_the_values() -> None:
    objects, _ = render({"mesh": {"srtp": False}})
    args = container(find(objects, "Deployment", "msm-control-plane"))["args"]
    assert "--no-srtp" in args and "--srtp" not in args
    objects, _ = render({"mesh": {"srtpRekeySeconds": 600}})
    assert flag(container(find(objects, "Deployment", "msm-control-plane"))["args"], "--srtp-rekey") == "600"
    with pytest.raises(helm.HelmValuesError):
        render({"mesh": {"srtpRekeySeconds": 5}})


# --- the proxy's media socket directory (memif) ----------------------------------------------------
MEDIA_KEY = "media.mediastreamingmesh.io/memif"


def validate_all(objects: list[Obj]) -> None:
    for obj in objects:
        if not obj["apiVersion"].startswith("cert-manager.io/"):
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)


def test_proxy_mounts_the_media_socket_directory(default: list[Obj]) -> None:
    pod = find(default, "DaemonSet", "msm-proxy")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "media"]
    # The same node directory the webhook mounts into annotated pods (webhook/media.py).
    assert volume == {"name": "media", "hostPath": {"path": "/var/run/msm/media", "type": "DirectoryOrCreate"}}
    assert {"name": "media", "mountPath": "/run/msm/media"} in container({"spec": {"template": {"spec": pod}}})[
        "volumeMounts"]
    (init,) = pod["initContainers"]
    assert init["name"] == "media-dir"
    assert init["command"] == ["chown", "10001:10001", "/run/msm/media"]   # the proxy's runAsUser:runAsGroup
    assert pod["securityContext"]["runAsGroup"] == 10001 and _webhook_media_gid(default) == "10001"
    args = pod["containers"][0]["args"]
    assert args[args.index("--media-dir") + 1] == "/run/msm/media"   # the agent serves apps on the mount
    assert init["image"] == pod["containers"][0]["image"]
    assert init["volumeMounts"] == [{"name": "media", "mountPath": "/run/msm/media"}]
    context = init["securityContext"]
    assert context["runAsUser"] == 0 and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}   # nothing but chown


def test_media_socket_follows_the_values() -> None:
    objects, _ = render({"proxy": {"podSecurityContext": {"runAsUser": 20002, "runAsGroup": 30003}}})
    validate_all(objects)
    pod = find(objects, "DaemonSet", "msm-proxy")["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"] == ["chown", "20002:30003", "/run/msm/media"]
    assert _webhook_media_gid(objects) == "30003"   # the webhook hands memif pods the proxy's group
    # Without a runAsGroup the proxy runs with the group the directory gets and the webhook hands out.
    objects, _ = render({"proxy": {"podSecurityContext": {"runAsUser": 20002, "runAsGroup": None}}})
    validate_all(objects)
    pod = find(objects, "DaemonSet", "msm-proxy")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (20002, 20002)
    assert pod["initContainers"][0]["command"] == ["chown", "20002:20002", "/run/msm/media"]
    assert _webhook_media_gid(objects) == "20002"
    objects, _ = render({"proxy": {"mediaSocket": {"enabled": False}}})
    validate_all(objects)
    pod = find(objects, "DaemonSet", "msm-proxy")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert all(v["name"] != "media" for v in pod["volumes"])
    assert all(m["mountPath"] != "/run/msm/media" for m in pod["containers"][0]["volumeMounts"])
    assert "--media-dir" not in pod["containers"][0]["args"]
    report = helm.lint(CHART, {"proxy": {"mediaSocket": {"enabled": False}}}, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSIONS[-1]}.0")
    assert report["errors"] == []


def _webhook_media_gid(objects: list[Obj]) -> str:
    args = container(find(objects, "Deployment", "msm-webhook"))["args"]
    gid: str = args[args.index("--media-gid") + 1]
    return gid


def test_media_socket_value_is_typed() -> None:
    with pytest.raises(helm.HelmValuesError, match="mediaSocket"):
        render({"proxy": {"mediaSocket": {"enabled": "yes"}}})
    with pytest.raises(helm.HelmValuesError, match="mediaSocket"):
        render({"proxy": {"mediaSocket": {"path": "/tmp"}}})


def test_memif_annotated_pods_reach_the_webhook(default: list[Obj]) -> None:
    (condition,) = webhook_entry(default)["matchConditions"]
    expression = " ".join(condition["expression"].split())
    assert INJECT_KEY in expression
    # Any value, so that a malformed one is refused by the webhook rather than ignored.
    assert f"(has(object.metadata.annotations) && '{MEDIA_KEY}' in object.metadata.annotations)" in expression
    _, notes = render()
    assert f'{MEDIA_KEY}: "true"' in notes and "MSM_PROXY=unix:/run/msm/media/proxy.sock" in notes
    _, notes = render({"proxy": {"mediaSocket": {"enabled": False}}})
    assert MEDIA_KEY not in notes


# --- group frames between proxies, groups and bridges on every proxy -----------------------------------------


def _proxy_args(objects: list[Obj]) -> list[str]:
    args: list[str] = container(find(objects, "DaemonSet", "msm-proxy"))["args"][1:]
    return [a.replace("$(MSM_NODE_NAME)", "node-a").replace("$(MSM_HOST_IP)", "192.0.2.7") for a in args]


def test_proxy_fabric_follows_the_values() -> None:
    from msm.rtp_proxy import main as proxy_main

    objects, _ = render({"proxy": {"fabric": {"provider": "tcp;ofi_rxm,shm", "address": "10.1.2.3", "port": 7000,
                                              "maxFrame": 16 << 20, "credits": 8, "peers": 16}}})
    validate_all(objects)
    assert container_ports(container(find(objects, "DaemonSet", "msm-proxy")))["fabric"] == 7000
    fabric = proxy_main.fabric_settings(proxy_main.parse_args(_proxy_args(objects)))
    assert fabric == proxy_main.FabricSettings(["tcp;ofi_rxm", "shm"], "10.1.2.3", 7000, 16 << 20, 8, 16)
    # No endpoint, or any port: no port to list.
    for values in ({"provider": "none"}, {"port": 0}, {"provider": "shm"}):
        objects, _ = render({"proxy": {"fabric": values}})
        validate_all(objects)
        assert "fabric" not in container_ports(container(find(objects, "DaemonSet", "msm-proxy")))
        proxy_main.fabric_settings(proxy_main.parse_args(_proxy_args(objects)))
    objects, _ = render({"proxy": {"fabric": {"provider": "none"}}})
    assert proxy_main.fabric_settings(proxy_main.parse_args(_proxy_args(objects))).providers == []


MIC_SDP = ("v=0\r\no=- 0 0 IN IP4 192.0.2.9\r\ns=mic\r\nt=0 0\r\nm=audio 5006 RTP/AVP 97\r\n"
           "c=IN IP4 239.10.0.1/64\r\na=rtpmap:97 L24/48000/2\r\na=ptime:1\r\na=mediaclk:direct=0\r\n")
MEDIA_VALUES = {
    "groups": ["urn:studio:spare"],
    "bridges": [
        {"name": "mic1-in", "direction": "ingress", "group": "urn:studio:mic1", "nodes": ["node-a"],
         "sdp": "/etc/msm/media/mic1.sdp"},
        {"name": "mic1-out", "direction": "egress", "group": "urn:studio:mic1", "ipAddr": "239.10.0.2", "port": 5006,
         "payload": {"audio": {"channels": 2, "sampleRate": 48000, "format": "L24", "packetTime": "1ms"}}},
    ],
}


def test_proxy_media_config_is_a_config_map_passed_as_media_config(tmp_path: Path) -> None:
    from msm.media_config import load_media_file
    from msm.rtp_proxy import main as proxy_main

    values = {"proxy": {"mediaConfig": MEDIA_VALUES, "mediaFiles": {"mic1.sdp": MIC_SDP}}}
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSIONS[-1]}.0")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    objects, _ = render(values)
    validate_all(objects)
    config_map = find(objects, "ConfigMap", "msm-proxy-media")
    assert config_map["metadata"]["namespace"] == NAMESPACE and set(config_map["data"]) == {"media.yaml", "mic1.sdp"}
    daemonset = find(objects, "DaemonSet", "msm-proxy")
    pod = daemonset["spec"]["template"]["spec"]
    assert {"name": "media-config", "configMap": {"name": "msm-proxy-media"}} in pod["volumes"]
    assert {"name": "media-config", "mountPath": "/etc/msm/media", "readOnly": True} in container(daemonset)[
        "volumeMounts"]
    opts = proxy_main.parse_args(_proxy_args(objects))
    assert opts.media_config == "/etc/msm/media/media.yaml" and opts.node == "node-a"
    # What the proxy reads from the mount (here under tmp_path) is the section the values gave.
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text.replace("/etc/msm/media/", f"{tmp_path}/"))
    config = load_media_file(str(tmp_path / "media.yaml"))
    assert config.groups == ["urn:studio:spare"] and [b.name for b in config.bridges] == ["mic1-in", "mic1-out"]
    assert config.bridges[0].nodes == ("node-a",) and config.bridges[0].stream.address == "239.10.0.1"
    assert config.bridges[1].transport == "st2110-30"
    # A changed config rolls the DaemonSet (msm-proxy reads it at start).
    checksum = daemonset["spec"]["template"]["metadata"]["annotations"]["checksum/media-config"]
    objects, _ = render({"proxy": {"mediaConfig": {"groups": ["urn:studio:other"]}}})
    changed = find(objects, "DaemonSet", "msm-proxy")["spec"]["template"]["metadata"]["annotations"]
    assert changed["checksum/media-config"] != checksum


@pytest.mark.parametrize(("values", "error"), [
    ({"fabric": {"credits": 0}}, "HelmValuesError"),
    ({"fabric": {"provider": "udp"}}, "HelmValuesError"),
    ({"fabric": {"port": 70000}}, "HelmValuesError"),
    ({"fabric": {"address": "10.0.0.1:7000"}}, "HelmValuesError"),   # the port is fabric.port
    ({"mediaConfig": {"bridge": []}}, "HelmValuesError"),
    ({"mediaConfig": {"bridges": [{"name": "x", "direction": "sideways", "group": "urn:a"}]}}, "HelmValuesError"),
    ({"mediaFiles": {"media.yaml": "groups: []"}}, "HelmRenderError"),
    ({"mediaFiles": {"../x": "x"}}, "HelmValuesError"),
])
def test_bad_fabric_and_media_values_are_refused(values: dict[str, Any], error: str) -> None:
    with pytest.raises(getattr(helm, error)):
        render({"proxy": values})
