"""The admission webhook's decision: AdmissionReview fixtures in, JSONPatch out.

Every patch is applied (``jsonpatch``) and the patched Pod validated against the Kubernetes
schema (``kubernetes-validate``, strict: unknown fields fail), so a typo in the stub container
is a failing test here rather than an API server rejection in a cluster.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

import jsonpatch
import kubernetes_validate
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from msm.sdk.errors import MsmError
from msm.security.ca import CertificateAuthority
from msm.webhook import main as webhook_main
from msm.webhook import review as wr
from msm.webhook.errors import ConfigError, ReviewError
from msm.webhook.review import INJECT_KEY, MAX_REVIEW_BYTES, STATUS_KEY, InjectConfig, rejection, review
from msm.webhook.server import create_app
from tests.datafiles import load

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

K8S_VERSION = "1.30"
BUNDLE = CertificateAuthority.create(tempfile.mkdtemp(prefix="msm-test-ca-"), "mesh.test").trust_bundle_pem.decode()
CONFIG = InjectConfig(stub_image="registry.example/msm:0.1.0", control_plane="cp.msm-system.svc:9000",
                      trust_bundle_pem=BUNDLE, trust_domain="mesh.test")
STUB_VOLUMES = [
    {"name": "msm-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "msm", "expirationSeconds": 600, "path": "token"}}]}},
    {"name": "msm-tls", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
]


# -- helpers ---------------------------------------------------------------------------------------
def fixture(name: str) -> dict[str, Any]:
    return json.loads(load(f"k8s/webhook_{name}.json"))  # type: ignore[no-any-return]


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


def answer(document: dict[str, Any], config: InjectConfig = CONFIG) -> dict[str, Any]:
    """The AdmissionResponse for an allowed review (checks status, envelope and uid echo)."""
    status, reply = review(encode(document), config)
    body: dict[str, Any] = dict(reply)
    assert status == 200, body
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    response: dict[str, Any] = body["response"]
    assert response["uid"] == document["request"]["uid"]
    assert response["allowed"] is True
    return response


def patch_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"], validate=True))  # type: ignore[no-any-return]


def injected(document: dict[str, Any], config: InjectConfig = CONFIG) -> dict[str, Any]:
    """Review, apply the patch, validate the result against the Kubernetes schema; the patched Pod."""
    response = answer(document, config)
    assert response["auditAnnotations"] == {"injection": "injected"}
    pod = document["request"]["object"]
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)  # the fixture itself is a valid Pod
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, patch_of(response))
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    return patched


def not_injected(document: dict[str, Any], reason: str, config: InjectConfig = CONFIG) -> None:
    response = answer(document, config)
    assert "patch" not in response and "patchType" not in response
    assert reason in response["auditAnnotations"]["injection"]


def rejected(body: bytes) -> str:
    status, reply = review(body, CONFIG)
    answer_body: dict[str, Any] = dict(reply)
    assert status == 400, answer_body
    assert answer_body["kind"] == "Status" and answer_body["apiVersion"] == "v1"
    assert answer_body["code"] == 400 and answer_body["reason"] == "BadRequest"
    message: str = answer_body["message"]
    assert message and "\n" not in message
    return message


def stub_of(pod: dict[str, Any]) -> dict[str, Any]:
    stubs = [c for c in pod["spec"]["containers"] if c["name"] == "msm-stub"]
    assert len(stubs) == 1
    stub: dict[str, Any] = stubs[0]
    return stub


# -- injection -------------------------------------------------------------------------------------
def test_annotated_pod_gets_the_stub() -> None:
    document = fixture("pod_create_annotated")
    app = copy.deepcopy(document["request"]["object"]["spec"]["containers"][0])
    pod = injected(document)

    assert pod["metadata"]["annotations"] == {INJECT_KEY: "true", STATUS_KEY: "injected"}
    assert pod["spec"]["containers"][0] == app  # the app is untouched and still the first container
    assert stub_of(pod) == {
        "name": "msm-stub",
        "image": "registry.example/msm:0.1.0",
        "command": ["msm-stub"],
        "args": ["--control", "$(MSM_CONTROL_PLANE)", "--listen", "0.0.0.0:8554",
                 "--token-file", "/var/run/secrets/msm/token/token", "--tls-dir", "/var/run/secrets/msm/tls",
                 "--trust-domain", "mesh.test", "--bootstrap", "cp.msm-system.svc:9002"],
        "env": [
            {"name": "MSM_CONTROL_PLANE", "value": "cp.msm-system.svc:9000"},
            {"name": "MSM_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MSM_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "MSM_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MSM_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "MSM_TRUST_BUNDLE", "value": BUNDLE},
        ],
        "volumeMounts": [{"name": "msm-token", "mountPath": "/var/run/secrets/msm/token", "readOnly": True},
                         {"name": "msm-tls", "mountPath": "/var/run/secrets/msm/tls"}],
        "ports": [{"name": "rtsp-stub", "containerPort": 8554, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": 8554}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def test_annotation_key_is_escaped_in_the_patch_path() -> None:
    patch = patch_of(answer(fixture("pod_create_annotated")))
    assert patch[0] == {"op": "add", "path": "/metadata/annotations/sidecar.mediastreamingmesh.io~1status",
                        "value": "injected"}
    assert patch[-1]["op"] == "add" and patch[-1]["path"] == "/spec/containers/-"
    assert wr.escape_pointer("a/b~c/~1") == "a~1b~0c~1~01"


def test_label_on_a_pod_without_annotations_map() -> None:
    document = fixture("pod_create_deployment_labelled")
    assert "annotations" not in document["request"]["object"]["metadata"]
    assert "name" not in document["request"]["object"]["metadata"]  # a Deployment's Pod: generateName only
    patch = patch_of(answer(document))
    assert patch[0] == {"op": "add", "path": "/metadata/annotations", "value": {STATUS_KEY: "injected"}}
    pod = injected(document)
    assert pod["metadata"]["annotations"] == {STATUS_KEY: "injected"}
    assert pod["metadata"]["labels"][INJECT_KEY] == "true"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["viewer", "msm-stub"]


def test_null_annotations_are_replaced_by_a_map() -> None:
    document = fixture("pod_create_deployment_labelled")
    document["request"]["object"]["metadata"]["annotations"] = None
    pod = injected(document)
    assert pod["metadata"]["annotations"] == {STATUS_KEY: "injected"}


def test_existing_containers_and_init_containers_are_kept() -> None:
    document = fixture("pod_create_init_containers")
    before = copy.deepcopy(document["request"]["object"])
    pod = injected(document)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["recorder", "exporter", "msm-stub"]
    assert pod["spec"]["containers"][:2] == before["spec"]["containers"]
    assert pod["spec"]["initContainers"] == before["spec"]["initContainers"]
    assert pod["metadata"]["annotations"] == {**before["metadata"]["annotations"], STATUS_KEY: "injected"}
    assert pod["spec"]["volumes"] == before["spec"]["volumes"] + STUB_VOLUMES   # the pod's own kept


# -- the stub's identity: projected token, trust bundle, its own certificate directory -------------
def test_the_stub_gets_a_projected_token_and_a_place_for_its_certificate() -> None:
    document = fixture("pod_create_annotated")
    before = copy.deepcopy(document["request"]["object"]["spec"]["volumes"])
    assert injected(document)["spec"]["volumes"] == before + STUB_VOLUMES
    del document["request"]["object"]["spec"]["volumes"]           # a pod with no volumes at all
    pod = injected(document)
    assert pod["spec"]["volumes"] == STUB_VOLUMES
    # Only the stub mounts them: the app never sees the mesh token or the stub's key.
    for c in pod["spec"]["containers"]:
        if c["name"] != "msm-stub":
            assert not any(m["name"].startswith("msm-") for m in c.get("volumeMounts", []))
    # The stub's flags parse with the stub's own parser, and the bundle is the PEM it checks with.
    from msm.stub import main as stub_main
    stub = stub_of(pod)
    args = [a.replace("$(MSM_CONTROL_PLANE)", "cp:9000") for a in stub["args"]]
    environ = {e["name"]: e["value"] for e in stub["env"] if "value" in e}
    opts = stub_main.parse_args(args)
    assert (opts.token_file, opts.tls_dir, opts.insecure) == ("/var/run/secrets/msm/token/token",
                                                              "/var/run/secrets/msm/tls", False)
    assert environ["MSM_TRUST_BUNDLE"] == BUNDLE
    # It asks for its certificate on the bootstrap port: the main one wants a certificate already.
    assert opts.bootstrap == "cp.msm-system.svc:9002"
    opts.trust_bundle = BUNDLE
    stub_main.check_tls_arguments(opts)


def test_the_bootstrap_port_is_the_control_planes_host_on_9002_unless_told() -> None:
    assert InjectConfig(stub_image="r/msm:1", control_plane="[fd00::1]:9000").bootstrap == "[fd00::1]:9002"
    config = InjectConfig(stub_image="r/msm:1", control_plane="cp:9000", bootstrap="boot.example:7002",
                          trust_bundle_pem=BUNDLE)
    args = stub_of(injected(fixture("pod_create_annotated"), config))["args"]
    assert args[args.index("--bootstrap") + 1] == "boot.example:7002"
    opts = webhook_main.build_parser().parse_args([*TLS_FLAGS, "--stub-image", "r/msm:1", "--bootstrap", "b:1"])
    assert webhook_main.inject_config(webhook_main.settings(opts, {})).bootstrap == "b:1"
    environ = {"MSM_BOOTSTRAP": "env-b:9", "MSM_TLS_CERT": "c", "MSM_TLS_KEY": "k", "MSM_STUB_IMAGE": "r/msm:1"}
    values = webhook_main.settings(webhook_main.build_parser().parse_args([]), environ)
    assert values["bootstrap"] == "env-b:9"
    for bad in ("b", "b:0", "::1:9002"):
        with pytest.raises(MsmError, match="bootstrap address must be HOST:PORT"):
            InjectConfig(stub_image="r/msm:1", bootstrap=bad)
    insecure = stub_of(injected(fixture("pod_create_annotated"), InjectConfig(stub_image="r/msm:1",
                                                                              insecure_stubs=True)))
    assert "--bootstrap" not in insecure["args"]


def test_token_audience_and_expiry_follow_the_config() -> None:
    config = InjectConfig(stub_image="r/msm:1", trust_bundle_pem=BUNDLE, token_audience="mesh", token_expiration=3600)
    pod = injected(fixture("pod_create_annotated"), config)
    (token,) = pod["spec"]["volumes"][-2]["projected"]["sources"]
    assert token == {"serviceAccountToken": {"audience": "mesh", "expirationSeconds": 3600, "path": "token"}}


def test_insecure_stubs_are_asked_for_explicitly() -> None:
    config = InjectConfig(stub_image="r/msm:1", insecure_stubs=True)
    pod = injected(fixture("pod_create_annotated"), config)
    assert stub_of(pod)["args"][-1] == "--insecure"
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["kube-api-access-7x2kq"]
    assert "volumeMounts" not in stub_of(pod)


def test_a_pod_volume_named_like_the_stubs_is_a_clear_refusal() -> None:
    document = fixture("pod_create_init_containers")
    document["request"]["object"]["spec"]["volumes"].append({"name": "msm-token", "emptyDir": {}})
    message = rejected(encode(document))
    assert "msm-token" in message


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"trust_bundle_pem": "not a certificate"}, "PEM"),
    ({"trust_bundle_pem": "-----BEGIN CERTIFICATE-----" + "A" * 70000}, "PEM"),
    ({"token_expiration": 60}, "600-86400"),
    ({"token_audience": "two words"}, "audience"),
])
def test_bad_identity_settings(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        InjectConfig(stub_image="r/msm:1", **kwargs)


TLS_FLAGS = ["--tls-cert", "cert.pem", "--tls-key", "key.pem"]


def test_webhook_reads_the_trust_bundle_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(BUNDLE)
    opts = webhook_main.build_parser().parse_args(
        [*TLS_FLAGS, "--stub-image", "r/msm:1", "--trust-bundle", str(tmp_path / "ca.pem"),
         "--token-expiration", "900"])
    config = webhook_main.inject_config(webhook_main.settings(opts, {}))
    assert (config.trust_bundle_pem, config.token_expiration, config.insecure_stubs) == (BUNDLE, 900, False)
    for argv, words in [(["--trust-bundle", str(tmp_path / "missing.pem")], "cannot read the trust bundle"),
                        (["--token-expiration", "ten"], "seconds")]:
        opts = webhook_main.build_parser().parse_args([*TLS_FLAGS, "--stub-image", "r/msm:1", *argv])
        with pytest.raises(ConfigError, match=words):
            webhook_main.inject_config(webhook_main.settings(opts, {}))


def test_injection_is_idempotent() -> None:
    document = fixture("pod_create_annotated")
    pod = injected(document)
    document["request"]["object"] = pod
    not_injected(document, "already injected")


def test_flags_reach_the_stub() -> None:
    config = InjectConfig(stub_image="ghcr.io/acme/msm@sha256:" + "ab" * 32, control_plane="10.0.0.7:9900")
    stub = stub_of(injected(fixture("pod_create_annotated"), config))
    assert stub["image"] == config.stub_image
    assert {"name": "MSM_CONTROL_PLANE", "value": "10.0.0.7:9900"} in stub["env"]


# -- pods left alone ---------------------------------------------------------------------------------
def _annotate(value: str | None, label: str | None = None) -> dict[str, Any]:
    document = fixture("pod_create_plain")
    metadata = document["request"]["object"]["metadata"]
    if value is not None:
        metadata["annotations"] = {INJECT_KEY: value}
    if label is not None:
        metadata["labels"] = {INJECT_KEY: label}
    return document


def _in_namespace(namespace: str) -> dict[str, Any]:
    document = fixture("pod_create_annotated")
    document["request"]["namespace"] = namespace
    document["request"]["object"]["metadata"]["namespace"] = namespace
    return document


def _already(how: str) -> dict[str, Any]:
    document = fixture("pod_create_init_containers")
    spec = document["request"]["object"]["spec"]
    if how == "annotation":
        document["request"]["object"]["metadata"]["annotations"][STATUS_KEY] = "injected"
    elif how == "container":
        spec["containers"].append({"name": "msm-stub", "image": "old/msm:0.0.1"})
    else:
        spec["initContainers"].append({"name": "msm-stub", "image": "old/msm:0.0.1"})
    return document


@pytest.mark.parametrize(("document", "reason"), [
    pytest.param(fixture("pod_create_plain"), "no sidecar.mediastreamingmesh.io/inject", id="no-annotation"),
    pytest.param(_annotate("false"), "no sidecar.mediastreamingmesh.io/inject", id="annotation-false"),
    pytest.param(_annotate(""), "no sidecar.mediastreamingmesh.io/inject", id="annotation-empty"),
    pytest.param(_annotate(None, "false"), "no sidecar.mediastreamingmesh.io/inject", id="label-false"),
    pytest.param(_annotate("false", "true"), "no sidecar.mediastreamingmesh.io/inject", id="annotation-wins"),
    pytest.param(_already("annotation"), "already injected", id="status-annotation"),
    pytest.param(_already("container"), "already injected", id="stub-container"),
    pytest.param(_already("init"), "already injected", id="stub-init-container"),
    pytest.param(_in_namespace("kube-system"), "kube-system", id="kube-system"),
    pytest.param(_in_namespace("msm-system"), "mesh's own", id="mesh-namespace"),
])
def test_pods_left_alone(document: dict[str, Any], reason: str) -> None:
    not_injected(document, reason)


def test_annotation_with_label_false_is_injected() -> None:
    injected(_annotate("true", "false"))


def test_mesh_namespace_is_configurable() -> None:
    config = InjectConfig(stub_image="msm:1", mesh_namespace="mesh")
    not_injected(_in_namespace("mesh"), "mesh's own", config)
    injected(_in_namespace("msm-system"), config)


def test_namespace_from_the_object_when_the_request_has_none() -> None:
    document = _in_namespace("kube-system")
    del document["request"]["namespace"]
    not_injected(document, "kube-system")


# -- not ours: well-formed reviews of something else -------------------------------------------------
def test_deployment_review_is_allowed_untouched() -> None:
    not_injected(fixture("deployment_create"), "not a Pod (apps/v1 Deployment)")


@pytest.mark.parametrize(("operation", "sub"), [("UPDATE", None), ("DELETE", None), ("CREATE", "status")])
def test_only_pod_create_is_injected(operation: str, sub: str | None) -> None:
    document = fixture("pod_create_annotated")
    document["request"]["operation"] = operation
    if sub:
        document["request"]["subResource"] = sub
    not_injected(document, "only Pod CREATE")


# -- bad reviews: 400 with a message, never a 500 ----------------------------------------------------
def _mutated(change: Any) -> bytes:
    document = fixture("pod_create_annotated")
    change(document)
    return encode(document)


def _set(path: str, value: Any) -> Any:
    *parents, last = path.split(".")

    def change(document: dict[str, Any]) -> None:
        node = document
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return change


_DELETE = object()


@pytest.mark.parametrize(("body", "message"), [
    pytest.param(b"this is not json", "not JSON", id="garbage"),
    pytest.param(b"", "empty body", id="empty"),
    pytest.param(b" \r\n\t", "empty body", id="whitespace"),
    pytest.param(b"\xff\xfe\x00garbage", "not JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", "body must be a JSON object", id="array"),
    pytest.param(b"null", "body must be a JSON object", id="null"),
    pytest.param(b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}', "no request",
                 id="missing-request"),
    pytest.param(_mutated(_set("request", None)), "no request", id="null-request"),
    pytest.param(_mutated(_set("request", [])), "request must be a JSON object", id="request-array"),
    pytest.param(_mutated(_set("apiVersion", "admission.k8s.io/v1beta1")), "apiVersion must be admission.k8s.io/v1",
                 id="v1beta1"),
    pytest.param(_mutated(_set("kind", "Pod")), "kind must be AdmissionReview", id="wrong-kind"),
    pytest.param(_mutated(_set("request.uid", _DELETE)), "request.uid", id="missing-uid"),
    pytest.param(_mutated(_set("request.uid", "")), "request.uid", id="empty-uid"),
    pytest.param(_mutated(_set("request.uid", 42)), "request.uid", id="uid-number"),
    pytest.param(_mutated(_set("request.kind", _DELETE)), "request.kind", id="missing-kind"),
    pytest.param(_mutated(_set("request.kind", "Pod")), "request.kind", id="kind-string"),
    pytest.param(_mutated(_set("request.kind.version", None)), "request.kind.version", id="kind-no-version"),
    pytest.param(_mutated(_set("request.operation", _DELETE)), "request.operation", id="missing-operation"),
    pytest.param(_mutated(_set("request.namespace", 7)), "request.namespace", id="namespace-number"),
    pytest.param(_mutated(_set("request.object", None)), "needs request.object", id="null-object"),
    pytest.param(_mutated(_set("request.object", _DELETE)), "needs request.object", id="missing-object"),
    pytest.param(encode(fixture("deployment_create") | {"request": fixture("deployment_create")["request"]
                                                         | {"kind": {"group": "", "version": "v1", "kind": "Pod"}}}),
                 "request.object is 'apps/v1' 'Deployment'", id="deployment-said-pod"),
    pytest.param(_mutated(_set("request.object.metadata.annotations", {INJECT_KEY: True})),
                 "annotations['sidecar.mediastreamingmesh.io/inject'] must be a string", id="annotation-bool"),
    pytest.param(_mutated(_set("request.object.metadata.labels", ["a"])), "labels must be a JSON object",
                 id="labels-array"),
    pytest.param(_mutated(_set("request.object.spec", _DELETE)), "request.object.spec", id="missing-spec"),
    pytest.param(_mutated(_set("request.object.spec.containers", {})), "containers must be a list",
                 id="containers-object"),
    pytest.param(_mutated(_set("request.object.spec.containers", ["app"])), "containers[0] must be a JSON object",
                 id="container-string"),
    pytest.param(_mutated(lambda d: [d["request"].pop("namespace"),
                                     d["request"]["object"]["metadata"].pop("namespace")]),
                 "needs request.namespace", id="no-namespace"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="deep-nesting"),
    pytest.param(b'{"kind": "AdmissionReview", "n": ' + b"9" * 5000 + b"}", "not JSON", id="huge-integer"),
    pytest.param(b" " * MAX_REVIEW_BYTES + b"{}", "too large", id="huge-body"),
])
def test_bad_reviews_are_400(body: bytes, message: str) -> None:
    assert message in rejected(body)


def test_body_at_the_limit_is_read() -> None:
    body = encode(fixture("pod_create_annotated"))
    padded = body + b" " * (MAX_REVIEW_BYTES - len(body))
    assert len(padded) == MAX_REVIEW_BYTES
    assert review(padded, CONFIG)[0] == 200
    assert "too large" in rejected(padded + b" ")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(st.binary(max_size=256))
def test_any_bytes_get_an_answer(body: bytes) -> None:
    status, answer_body = review(body, CONFIG)
    assert status in (200, 400)


_FIELDS = ["apiVersion", "kind", "request", "request.uid", "request.kind", "request.kind.group", "request.kind.kind",
           "request.operation", "request.name", "request.namespace", "request.subResource", "request.object",
           "request.object.kind", "request.object.apiVersion", "request.object.metadata",
           "request.object.metadata.name", "request.object.metadata.namespace", "request.object.metadata.annotations",
           "request.object.metadata.labels", "request.object.spec", "request.object.spec.containers",
           "request.object.spec.initContainers"]


@given(path=st.sampled_from(_FIELDS), value=_json)
def test_any_field_value_gets_an_answer(path: str, value: Any) -> None:
    status, reply = review(_mutated(_set(path, value)), CONFIG)
    assert status in (200, 400)
    if status == 200:
        response: dict[str, Any] = cast(dict[str, Any], reply)["response"]
        # The response echoes the request's uid, whatever (valid) uid the request carried.
        expected = value if path == "request.uid" else fixture("pod_create_annotated")["request"]["uid"]
        assert response["uid"] == expected


# -- configuration ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"stub_image": ""}, {"stub_image": "msm 1"}, {"stub_image": "msm:1", "control_plane": "cp"},
    {"stub_image": "msm:1", "control_plane": "cp:0"}, {"stub_image": "msm:1", "control_plane": ":9000"},
    {"stub_image": "msm:1", "mesh_namespace": "Bad_NS"}, {"stub_image": "msm:1", "control_plane": "::1:9000"},
    {"stub_image": "msm:1", "control_plane": "c p:9000"}, {"stub_image": "msm:1", "control_plane": "cp:65536"},
])
def test_bad_config(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        InjectConfig(**kwargs)


def test_rejection_is_the_one_http_answer() -> None:
    """Any error becomes a v1 Status: a webhook error with its http_status, a bug with a bare 500."""
    assert InjectConfig(stub_image="msm:1", control_plane="[fd00::1]:9000").control_plane == "[fd00::1]:9000"
    code, body = rejection(ReviewError("too big", status=413))
    assert (code, body["code"], body["reason"], body["message"]) == (413, 413, "RequestEntityTooLarge", "too big")
    code, body = rejection(RuntimeError("secret detail"))
    assert (code, body["reason"], body["message"]) == (500, "InternalError", "internal error")


# -- the thin HTTP layer (plain HTTP here; HTTPS in tests/e2e/test_webhook_https.py) --------------
@pytest.fixture
async def client() -> Any:
    async with TestClient(TestServer(create_app(CONFIG))) as test_client:
        yield test_client


async def test_http_mutate_and_healthz(client: TestClient[Any, Any]) -> None:
    document = fixture("pod_create_annotated")
    response = await client.post("/mutate", data=encode(document), headers={"Content-Type": "application/json"})
    assert response.status == 200
    body = await response.json()
    assert body["response"]["uid"] == document["request"]["uid"] and "patch" in body["response"]
    health = await client.get("/healthz")
    assert health.status == 200 and (await health.text()).strip() == "ok"


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/mutate", 405), ("PUT", "/mutate", 405), ("POST", "/healthz", 405),
    ("POST", "/validate", 404), ("GET", "/", 404),
])
async def test_http_wrong_method_or_path(client: TestClient[Any, Any], method: str, path: str, status: int) -> None:
    response = await client.request(method, path, data=b"{}")
    assert response.status == status


async def test_http_bad_bodies(client: TestClient[Any, Any]) -> None:
    garbage = await client.post("/mutate", data=b"{nope")
    assert garbage.status == 400 and "not JSON" in (await garbage.json())["message"]
    empty = await client.post("/mutate")
    assert empty.status == 400 and "empty body" in (await empty.json())["message"]


async def test_http_oversized_body_is_refused_by_its_length(client: TestClient[Any, Any]) -> None:
    response = await client.post("/mutate", data=io.BytesIO(b"{" + b" " * (4 * MAX_REVIEW_BYTES)))
    assert response.status == 400
    assert "too large: 4194305 bytes" in (await response.json())["message"]


async def test_http_oversized_chunked_body_is_cut_off(client: TestClient[Any, Any]) -> None:
    async def chunks() -> Any:
        for _ in range(64):
            yield b" " * 65536  # 4 MiB in all, no Content-Length

    response = await client.post("/mutate", data=chunks())
    assert response.status == 400
    assert f"the limit is {MAX_REVIEW_BYTES}" in (await response.json())["message"]


# -- the command line ---------------------------------------------------------------------------------
def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "msm.webhook.main", *args], capture_output=True, text=True,
                          timeout=30, env=env, cwd=ROOT)


def test_cli_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--port", "--tls-cert", "--tls-key", "--stub-image", "--control-plane", "--mesh-namespace",
                 "MSM_STUB_IMAGE", "MSM_CONTROL_PLANE"):
        assert flag in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    ([], "--tls-cert (or MSM_TLS_CERT) is required"),
    (["--tls-cert", "/nonexistent/tls.crt", "--tls-key", "/nonexistent/tls.key", "--stub-image", "msm:1"],
     "cannot read /nonexistent/tls.crt: No such file or directory"),
    (["--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname", "--stub-image", "msm:1"],
     "/etc/hostname holds no PEM certificate"),
    (["--tls-cert", "x", "--tls-key", "y"], "--stub-image (or MSM_STUB_IMAGE) is required"),
    (["--tls-cert", "x", "--tls-key", "y", "--stub-image", "msm:1", "--port", "70000"], "port must be 0-65535"),
    (["--tls-cert", "x", "--tls-key", "y", "--stub-image", "msm:1", "--control-plane", "nowhere"],
     "control plane must be HOST:PORT"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_errors_are_one_line(args: list[str], message: str) -> None:
    result = run(*args, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("msm-webhook: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_flags_win_over_environment() -> None:
    parser = webhook_main.build_parser()
    environ = {"MSM_STUB_IMAGE": "env/msm:1", "MSM_CONTROL_PLANE": "env-cp:9000", "MSM_TLS_CERT": "/env/crt",
               "MSM_TLS_KEY": "/env/key", "MSM_WEBHOOK_PORT": "9443"}
    values = webhook_main.settings(parser.parse_args(["--control-plane", "flag-cp:9000", "--port", "0"]), environ)
    assert values["control_plane"] == "flag-cp:9000" and values["port"] == "0"
    assert values["stub_image"] == "env/msm:1" and values["tls_cert"] == "/env/crt"
    assert values["mesh_namespace"] == "msm-system" and values["host"] == "0.0.0.0"


def test_the_schema_check_has_teeth() -> None:
    """A control: the strict schema refuses a stub with a misspelt or mistyped field."""
    pod = injected(fixture("pod_create_annotated"))
    broken: dict[str, Any]
    for broken in ({"readinessprobe": {}}, {"securityContext": {"runAsUser": "1337"}}):
        bad = copy.deepcopy(pod)
        stub_of(bad).update(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# -- the media socket directory: media.mediastreamingmesh.io/memif ------------------------------------
MEDIA_KEY = "media.mediastreamingmesh.io/memif"
MEDIA_VOLUME = {"name": "msm-media", "hostPath": {"path": "/var/run/msm/media", "type": "DirectoryOrCreate"}}
MEDIA_MOUNT = {"name": "msm-media", "mountPath": "/run/msm/media"}
MEDIA_ENV = {"name": "MSM_PROXY", "value": "unix:/run/msm/media/proxy.sock"}


def reviewed(document: dict[str, Any], note: str) -> dict[str, Any]:
    """Review, check the audit note, apply the patch (if any) and validate the Pod; the patched Pod."""
    response = answer(document)
    assert note in response["auditAnnotations"]["injection"], response["auditAnnotations"]
    pod: dict[str, Any] = document["request"]["object"]
    if "patch" in response:
        pod = jsonpatch.apply_patch(pod, patch_of(response))
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    return pod


def _containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def test_memif_pod_gets_the_media_socket_in_app_containers_and_native_sidecars() -> None:
    document = fixture("pod_create_media")
    before = copy.deepcopy(document["request"]["object"])
    pod = reviewed(document, "skipped: no sidecar.mediastreamingmesh.io/inject: \"true\" annotation or label; "
                             "memif: mounted")
    assert pod["metadata"] == before["metadata"]   # no stub, no status annotation
    assert pod["spec"]["volumes"] == before["spec"]["volumes"] + [MEDIA_VOLUME]
    old, new = _containers(before), _containers(pod)
    assert list(new) == ["fetch-playlist", "tally", "playout", "multiviewer"]
    assert new["fetch-playlist"] == old["fetch-playlist"]   # an ordinary init container has finished by then
    for name in ("tally", "playout", "multiviewer"):
        assert new[name]["volumeMounts"] == old[name]["volumeMounts"] + [MEDIA_MOUNT]
        assert new[name]["env"] == old[name].get("env", []) + [MEDIA_ENV]
        assert {k: v for k, v in new[name].items() if k not in ("env", "volumeMounts")} == {
            k: v for k, v in old[name].items() if k not in ("env", "volumeMounts")}
    # The agent's directory is 0770 and its sockets 0660 (the proxy's user and group): the apps get the group.
    assert before["spec"]["securityContext"] == {}
    assert pod["spec"]["securityContext"] == {"supplementalGroups": [10001]}
    assert {k: v for k, v in pod["spec"].items() if k not in ("volumes", "initContainers", "containers",
                                                               "securityContext")} == {
        k: v for k, v in before["spec"].items() if k not in ("volumes", "initContainers", "containers",
                                                             "securityContext")}


def test_memif_and_the_stub_in_one_patch() -> None:
    document = fixture("pod_create_annotated")
    pod_in = document["request"]["object"]
    pod_in["metadata"]["annotations"][MEDIA_KEY] = "TRUE"
    del pod_in["spec"]["volumes"]                       # the stub's patch creates the list, ours appends
    del pod_in["spec"]["containers"][0]["volumeMounts"]
    pod = reviewed(document, "injected; memif: mounted")
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["msm-token", "msm-tls", "msm-media"]
    camera, stub = pod["spec"]["containers"]
    assert camera["volumeMounts"] == [MEDIA_MOUNT] and camera["env"] == [MEDIA_ENV]
    assert stub["name"] == "msm-stub"
    assert MEDIA_MOUNT not in stub["volumeMounts"] and MEDIA_ENV not in stub["env"]


def test_memif_is_idempotent() -> None:
    document = fixture("pod_create_media")
    document["request"]["object"] = reviewed(document, "memif: mounted")
    again = answer(document)
    assert "patch" not in again and again["auditAnnotations"]["injection"].endswith("; memif: already mounted")
    both = fixture("pod_create_annotated")
    both["request"]["object"]["metadata"]["annotations"][MEDIA_KEY] = "true"
    both["request"]["object"] = reviewed(both, "injected; memif: mounted")
    not_injected(both, "already injected; memif: already mounted")


def test_memif_keeps_an_existing_msm_proxy_and_mount() -> None:
    document = fixture("pod_create_media")
    playout = document["request"]["object"]["spec"]["containers"][0]
    playout["env"].append({"name": "MSM_PROXY", "value": "unix:/sockets/other.sock"})
    document["request"]["object"]["spec"]["volumes"].append(MEDIA_VOLUME)
    playout["volumeMounts"].append({"name": "msm-media", "mountPath": "/run/msm/media/", "readOnly": True})
    pod = reviewed(document, "memif: mounted")
    new = _containers(pod)
    assert new["playout"] == playout                            # nothing added to it
    assert [v["name"] for v in pod["spec"]["volumes"]].count("msm-media") == 1
    assert new["multiviewer"]["env"] == [MEDIA_ENV]


@pytest.mark.parametrize(("context", "groups"), [
    (None, [10001]),                                                    # no securityContext at all
    ({"runAsUser": 2000, "fsGroup": 3000}, [10001]),                    # others kept, the list created
    ({"runAsUser": 2000, "supplementalGroups": [44, 109]}, [44, 109, 10001]),   # appended
    ({"supplementalGroups": [5, 10001]}, [5, 10001]),                   # already there: nothing added
])
def test_memif_pod_gets_the_proxys_group_once(context: dict[str, Any] | None, groups: list[int]) -> None:
    document = fixture("pod_create_media")
    spec = document["request"]["object"]["spec"]
    if context is None:
        del spec["securityContext"]
    else:
        spec["securityContext"] = copy.deepcopy(context)
    pod = reviewed(document, "memif: mounted")
    assert pod["spec"]["securityContext"] == {**(context or {}), "supplementalGroups": groups}
    document["request"]["object"] = pod
    again = answer(document)        # re-admission: nothing twice
    assert "patch" not in again and again["auditAnnotations"]["injection"].endswith("; memif: already mounted")


def test_the_proxys_group_follows_the_setting() -> None:
    document = fixture("pod_create_media")
    response = answer(document, dataclasses.replace(CONFIG, media_gid=30003))
    pod = jsonpatch.apply_patch(document["request"]["object"], patch_of(response))
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert pod["spec"]["securityContext"] == {"supplementalGroups": [30003]}
    response = answer(document, dataclasses.replace(CONFIG, media_gid=0))   # 0: no group handed out
    assert all("securityContext" not in op["path"] for op in patch_of(response))
    windows = fixture("pod_create_media")
    windows["request"]["object"]["spec"]["os"] = {"name": "windows"}
    assert all("securityContext" not in op["path"] for op in patch_of(answer(windows)))
    opts = webhook_main.build_parser().parse_args([*TLS_FLAGS, "--stub-image", "r/msm:1"])
    assert webhook_main.inject_config(webhook_main.settings(opts, {})).media_gid == 10001
    environ = {"MSM_MEDIA_GID": "30003"}
    assert webhook_main.inject_config(webhook_main.settings(opts, environ)).media_gid == 30003
    for bad in ("-1", "ten", "2147483648", "１"):
        opts = webhook_main.build_parser().parse_args([*TLS_FLAGS, "--stub-image", "r/msm:1", "--media-gid", bad])
        with pytest.raises(ConfigError, match="media gid must be a group id"):
            webhook_main.inject_config(webhook_main.settings(opts, {}))


@pytest.mark.parametrize("value", ["false", "False", " false "])
def test_memif_false_adds_nothing(value: str) -> None:
    document = fixture("pod_create_media")
    document["request"]["object"]["metadata"]["annotations"][MEDIA_KEY] = value
    not_injected(document, "skipped: no sidecar.mediastreamingmesh.io/inject")
    assert "memif" not in answer(document)["auditAnnotations"]["injection"]


def _media_changed(change: Any) -> bytes:
    document = fixture("pod_create_media")
    change(document["request"]["object"])
    return encode(document)


@pytest.mark.parametrize(("change", "message"), [
    (lambda pod: pod["metadata"]["annotations"].update({MEDIA_KEY: "yes"}),
     "annotation media.mediastreamingmesh.io/memif must be \"true\" or \"false\", got 'yes'"),
    (lambda pod: pod["metadata"]["annotations"].update({MEDIA_KEY: ""}),
     "annotation media.mediastreamingmesh.io/memif must be \"true\" or \"false\", got ''"),
    (lambda pod: pod["spec"]["volumes"].append({"name": "msm-media", "emptyDir": {}}),
     "the pod already has a volume named 'msm-media' that is not the proxy's /var/run/msm/media"),
    (lambda pod: pod["spec"]["containers"][1]["volumeMounts"].append({"name": "clips", "mountPath": "/run/msm/media"}),
     "request.object.spec.containers[1] already mounts another volume at /run/msm/media"),
])
def test_memif_refusals_are_one_line_400s(change: Any, message: str) -> None:
    assert rejected(_media_changed(change)).startswith(message)


def test_apply_adds_matches_jsonpatch() -> None:
    """The webhook's own small applier (to order the stub's and the media operations) agrees with jsonpatch."""
    from msm.webhook.media import apply_adds
    document = fixture("pod_create_annotated")
    document["request"]["object"]["metadata"]["annotations"][MEDIA_KEY] = "true"
    ops = patch_of(answer(document))
    pod = document["request"]["object"]
    assert apply_adds(pod, cast(Any, ops)) == jsonpatch.apply_patch(pod, ops)
