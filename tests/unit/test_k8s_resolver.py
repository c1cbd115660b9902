"""The Kubernetes resolver against recorded API objects (served by tests/fake_kube.py)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from msm.control_plane.kubernetes import (
    ALLOW_NAMESPACES,
    ALLOW_QUERY,
    CREDENTIALS_SECRET,
    KubeClient,
    KubeError,
    KubernetesResolver,
)
from msm.control_plane.resolver import Asker, BadPath, NotFound, RouteError, normalise_path, parse_route
from msm.runtime.redact import redact_url
from msm.sdk import errors
from msm.stub.rtsp_client import credentials_of
from tests.fake_kube import FakeKube, load, secret

pytestmark = pytest.mark.timeout(30)

MEDIA = Asker(namespace="media")


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fake = FakeKube()
    fake.add_list("services", load("resolver_services.json"))
    fake.add_list("endpointslices", load("resolver_endpointslices.json"))
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def resolver(kube: FakeKube, tmp_path: Path) -> AsyncIterator[KubernetesResolver]:
    client = KubeClient.from_kubeconfig(str(kube.kubeconfig(tmp_path / "kubeconfig")))
    res = KubernetesResolver(client)
    await res.start()
    yield res
    await res.stop()


@pytest.mark.parametrize("url", [
    "rtsp://camera-svc.media:554/live/1",
    "rtsp://camera-svc.media.svc.cluster.local/live/1",
    "rtsp://10.96.0.10:554/live/1",
])
async def test_service_to_ready_endpoint(resolver: KubernetesResolver, url: str) -> None:
    route = await resolver.resolve(url, MEDIA)
    # The terminating endpoint is skipped; the port is the endpoint's, via the named targetPort.
    assert route.url == "rtsp://10.244.0.5:8554/live/1"
    assert (route.node, route.namespace, route.pod) == ("node-a", "media", "camera-7d9f8")
    assert route.name == "media/camera-svc/live/1"


async def test_short_name_uses_the_askers_namespace(resolver: KubernetesResolver) -> None:
    route = await resolver.resolve("rtsp://camera-svc/live/1", Asker(namespace="media"))
    assert route.pod == "camera-7d9f8"
    with pytest.raises(NotFound):
        await resolver.resolve("rtsp://camera-svc/live/1", Asker(namespace="default"))


async def test_original_destination_when_the_url_host_is_unknown(resolver: KubernetesResolver) -> None:
    route = await resolver.resolve("rtsp://some-alias/live/1", Asker(namespace="media", original_dst="10.96.0.10:554"))
    assert route.url == "rtsp://10.244.0.5:8554/live/1"
    for garbage in ("10.96.0.10", "10.96.0.10:http", "[10.96.0.10]:554", ""):
        with pytest.raises(NotFound):
            await resolver.resolve("rtsp://some-alias/live/1", Asker(namespace="media", original_dst=garbage))


def test_errors_are_leaves_of_the_msm_tree() -> None:
    """The names control_plane imports from here are the tree's classes, with the tree's codes."""
    assert KubeError is errors.KubeError and NotFound is errors.NotFound
    assert (NotFound("x").status, NotFound("x").grpc_code) == (404, "NOT_FOUND")
    with pytest.raises(RouteError) as caught:
        parse_route("no-url-here")
    assert isinstance(caught.value, errors.ConfigError) and "NAME=rtsp://" in caught.value.reason


async def test_unknown_service_and_port(resolver: KubernetesResolver) -> None:
    with pytest.raises(NotFound):
        await resolver.resolve("rtsp://nope.media/x", MEDIA)
    with pytest.raises(NotFound):
        await resolver.resolve("rtsp://camera-svc.media:1234/x", MEDIA)


async def test_watch_follows_endpoint_changes(kube: FakeKube, resolver: KubernetesResolver) -> None:
    slice_ = copy.deepcopy(load("resolver_endpointslices.json")["items"][0])
    slice_["endpoints"][1]["conditions"]["ready"] = False      # the camera pod goes unready...
    slice_["endpoints"][0]["conditions"] = {"ready": True, "serving": True, "terminating": False}
    kube.put("endpointslices", slice_)
    for _ in range(50):
        await asyncio.sleep(0.05)
        route = await resolver.resolve("rtsp://camera-svc.media/live/1", MEDIA)
        if route.node == "node-b":
            break
    assert (route.url, route.node) == ("rtsp://10.244.1.7:8554/live/1", "node-b")   # ...another takes over
    kube.delete("services", "media", "camera-svc")
    for _ in range(50):
        await asyncio.sleep(0.05)
        try:
            await resolver.resolve("rtsp://camera-svc.media/live/1", MEDIA)
        except NotFound:
            break
    else:
        pytest.fail("a deleted service still resolves")


async def test_bad_token_and_unreachable_server(kube: FakeKube, tmp_path: Path) -> None:
    kube.token = "other"
    client = KubeClient.from_kubeconfig(str(kube.kubeconfig(tmp_path / "kc")))
    kube.token = "test-token"
    with pytest.raises(KubeError, match="401"):
        await client.get("/api/v1/services")
    await client.close()
    dead = KubeClient("http://127.0.0.1:9")
    with pytest.raises(KubeError):
        await dead.get("/api/v1/services")
    await dead.close()
    (tmp_path / "broken").write_text("clusters: [")
    with pytest.raises(KubeError, match="cannot use kubeconfig"):
        KubeClient.from_kubeconfig(str(tmp_path / "broken"))
    # Well-formed YAML that is not a usable kubeconfig: a KubeError naming the file, never a traceback.
    context = "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    for body in ("clusters: [{name: k, cluster: {}}]\n",  # no server
                 "clusters: [{name: k, cluster: {server: 'https://h', certificate-authority: /nonexistent}}]\n",
                 "clusters: [{name: k, cluster: {server: 'https://h', certificate-authority-data: '!!'}}]\n",
                 "- a list\n"):
        (tmp_path / "odd").write_text(context + body if body[0] != "-" else body)
        with pytest.raises(KubeError, match="cannot use kubeconfig"):
            KubeClient.from_kubeconfig(str(tmp_path / "odd"))


# --- who may resolve what -------------------------------------------------------------------


def secret_cam(annotations: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """camera-svc's Service and EndpointSlice, copied into namespace team-b as secret-cam."""
    svc = copy.deepcopy(load("resolver_services.json")["items"][0])
    svc["metadata"] |= {"name": "secret-cam", "namespace": "team-b", "annotations": annotations or {}}
    svc["spec"] |= {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"]}
    slice_ = copy.deepcopy(load("resolver_endpointslices.json")["items"][0])
    slice_["metadata"] |= {"name": "secret-cam-x1", "namespace": "team-b"}
    slice_["metadata"]["labels"]["kubernetes.io/service-name"] = "secret-cam"
    return svc, slice_


async def until_resolves(resolver: KubernetesResolver, url: str, asker: Asker) -> None:
    for _ in range(100):
        with contextlib.suppress(NotFound):
            await resolver.resolve(url, asker)
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"{url} never resolved for {asker}")


async def test_a_viewer_cannot_resolve_another_namespaces_service(
        kube: FakeKube, resolver: KubernetesResolver) -> None:
    svc, slice_ = secret_cam()
    kube.put("endpointslices", slice_)
    kube.put("services", svc)
    await until_resolves(resolver, "rtsp://secret-cam.team-b/live", Asker(namespace="team-b"))
    team_a = Asker(namespace="team-a")
    for url, asker in [("rtsp://secret-cam.team-b/live", team_a),
                       ("rtsp://secret-cam.team-b.svc.cluster.local/live", team_a),
                       ("rtsp://10.96.0.20/live", team_a),                       # by ClusterIP
                       ("rtsp://alias/live", Asker(namespace="team-a", original_dst="10.96.0.20:554")),
                       ("rtsp://secret-cam.team-b/live", Asker())]:               # no namespace
        with pytest.raises(NotFound) as caught:
            await resolver.resolve(url, asker)
        # Answered as if it did not exist: the same words as for a name that is nowhere.
        missing = await _not_found(resolver, url.replace("secret-cam", "nothing-here"), asker)
        assert caught.value.reason.replace("secret-cam", "X") == missing.replace("nothing-here", "X")


async def _not_found(resolver: KubernetesResolver, url: str, asker: Asker) -> str:
    with pytest.raises(NotFound) as caught:
        await resolver.resolve(url, asker)
    return caught.value.reason


@pytest.mark.parametrize(("allow", "may"), [
    ("team-a", {"team-a"}), ("team-c, team-a", {"team-a"}), ("*", {"team-a", ""}), ("team-c", set()), ("", set()),
])
async def test_the_allow_namespaces_annotation_opens_a_service(
        kube: FakeKube, resolver: KubernetesResolver, allow: str, may: set[str]) -> None:
    svc, slice_ = secret_cam({ALLOW_NAMESPACES: allow})
    kube.put("endpointslices", slice_)
    kube.put("services", svc)
    await until_resolves(resolver, "rtsp://secret-cam.team-b/live", Asker(namespace="team-b"))
    for namespace in ("team-a", ""):
        asker = Asker(namespace=namespace)
        if namespace in may:
            route = await resolver.resolve("rtsp://secret-cam.team-b/live", asker)
            assert (route.namespace, route.pod, route.url) == ("media", "camera-7d9f8", "rtsp://10.244.0.5:8554/live")
        else:
            with pytest.raises(NotFound):
                await resolver.resolve("rtsp://secret-cam.team-b/live", asker)


TRAVERSALS = [
    "/../private/admin?user=root",
    "/live/../../private/admin",
    "/live/%2e%2e/private",
    "/live/%2E%2e/%2e%2e/private",
    "/./live",
    "/live/..%2fprivate",
    "/live%2f..%2fprivate",
    "/live%5c..%5cprivate",
    "/live/%00",
    "/live//x",
    "/live/%ff",
    "/" + "a" * 2000,
]


async def test_path_traversal_is_refused(resolver: KubernetesResolver) -> None:
    for path in TRAVERSALS:
        with pytest.raises(BadPath) as caught:
            await resolver.resolve(f"rtsp://camera-svc.media{path}", MEDIA)
        assert caught.value.status == 400 and "\n" not in caught.value.reason, path


async def test_query_strings_only_where_the_service_allows(
        kube: FakeKube, resolver: KubernetesResolver) -> None:
    with pytest.raises(BadPath, match="query"):
        await resolver.resolve("rtsp://camera-svc.media/live/1?admin=1", MEDIA)
    svc = copy.deepcopy(load("resolver_services.json")["items"][0])
    svc["metadata"]["annotations"] = {ALLOW_QUERY: "true"}
    kube.put("services", svc)
    for _ in range(100):
        with contextlib.suppress(BadPath):
            route = await resolver.resolve("rtsp://camera-svc.media/live/1?channel=2&q=a%20b", MEDIA)
            break
        await asyncio.sleep(0.02)
    assert route.url == "rtsp://10.244.0.5:8554/live/1?channel=2&q=a%20b"
    with pytest.raises(BadPath):
        await resolver.resolve("rtsp://camera-svc.media/live/1?a=\"b\"", MEDIA)


def test_normalised_paths() -> None:
    assert normalise_path("") == "/"
    assert normalise_path("/") == "/"
    assert normalise_path("/live/1/") == "/live/1"
    assert normalise_path("/caf%C3%A9/a%20b") == "/caf%C3%A9/a%20b"
    assert normalise_path("/live/trackID=0") == "/live/trackID=0"
    assert normalise_path("/%6Cive") == "/live"


# --- camera credentials from a Secret -------------------------------------------------------------

CAMERA = "rtsp://camera-svc.media/live/1"


def annotate(kube: FakeKube, annotations: dict[str, str]) -> None:
    svc = copy.deepcopy(load("resolver_services.json")["items"][0])
    svc["metadata"]["annotations"] = annotations
    kube.put("services", svc)


async def with_secret(resolver: KubernetesResolver, url: str = CAMERA, asker: Asker = MEDIA) -> str:
    """The route URL once the watch has brought the Service's annotation (it then carries userinfo)."""
    for _ in range(100):
        with contextlib.suppress(errors.Unavailable):
            route = await resolver.resolve(url, asker)
            if "@" in route.url:
                return route.url
        await asyncio.sleep(0.02)
    pytest.fail("the credentials-secret annotation never took effect")


async def failure(resolver: KubernetesResolver, url: str = CAMERA, asker: Asker = MEDIA) -> errors.Unavailable:
    for _ in range(100):
        try:
            await resolver.resolve(url, asker)
        except errors.Unavailable as exc:
            return exc
        except NotFound:
            pass    # the watch has not brought the Service yet
        await asyncio.sleep(0.02)
    pytest.fail("the route never failed")


def secret_reads(kube: FakeKube) -> list[str]:
    return [r for r in kube.requests if "/secrets" in r]


@pytest.mark.parametrize("kind", ["Opaque", "kubernetes.io/basic-auth"])
async def test_the_route_url_carries_the_secrets_credentials(
        kube: FakeKube, resolver: KubernetesResolver, kind: str) -> None:
    kube.put("secrets", secret("media", "cam-creds", {"username": "admin", "password": "hunter2"}, type_=kind))
    annotate(kube, {CREDENTIALS_SECRET: "cam-creds"})
    assert await with_secret(resolver) == "rtsp://admin:hunter2@10.244.0.5:8554/live/1"
    assert secret_reads(kube) == ["/api/v1/namespaces/media/secrets/cam-creds"]


async def test_special_characters_survive(kube: FakeKube, resolver: KubernetesResolver) -> None:
    user, password = "dom\\ops@site", "p@ss:w/rd?#%20 é&x=1"
    kube.put("secrets", secret("media", "cam-creds", {"username": user, "password": password}))
    annotate(kube, {CREDENTIALS_SECRET: "cam-creds"})
    url = await with_secret(resolver)
    assert url == ("rtsp://dom%5Cops%40site:p%40ss%3Aw%2Frd%3F%23%2520%20%C3%A9%26x%3D1@10.244.0.5:8554/live/1")
    parts = urlsplit(url)
    assert (parts.hostname, parts.port, parts.path) == ("10.244.0.5", 8554, "/live/1")
    assert credentials_of(url) == (user, password)   # what the stub answers the camera's challenge with
    assert redact_url(url) == "rtsp://***@10.244.0.5:8554/live/1"


@pytest.mark.parametrize(("objects", "forbidden", "words"), [
    ([], False, "credentials Secret media/cam-creds not found"),
    ([secret("media", "cam-creds", {"username": "admin"})], False, "has no key 'password'"),
    ([secret("media", "cam-creds", {"password": "hunter2"})], False, "has no key 'username'"),
    ([secret("media", "cam-creds", {"username": "admin", "password": "hunter2"},
             type_="kubernetes.io/service-account-token")], False, "is of type"),
    ([secret("media", "cam-creds", {"username": "admin", "password": "hunter2"})], True, "HTTP 403"),
])
async def test_an_unusable_secret_fails_the_route_clearly(
        kube: FakeKube, resolver: KubernetesResolver, objects: list[dict[str, Any]], forbidden: bool,
        words: str) -> None:
    for obj in objects:
        kube.put("secrets", obj)
    if forbidden:
        kube.forbidden_secrets.add("media")
    annotate(kube, {CREDENTIALS_SECRET: "cam-creds"})
    exc = await failure(resolver)
    assert exc.status == 503 and words in exc.reason, exc.reason
    assert "hunter2" not in exc.reason and "aHVudGVyMg" not in exc.reason      # nor its base64
    assert "\n" not in exc.reason and CAMERA not in exc.reason


async def test_a_secret_in_another_namespace_is_never_read(kube: FakeKube, resolver: KubernetesResolver) -> None:
    # team-b's Service names "cam-creds"; only media has one. A viewer in media may use the Service.
    kube.put("secrets", secret("media", "cam-creds", {"username": "admin", "password": "hunter2"}))
    svc, slice_ = secret_cam({ALLOW_NAMESPACES: "media", CREDENTIALS_SECRET: "cam-creds"})
    kube.put("endpointslices", slice_)
    kube.put("services", svc)
    exc = await failure(resolver, "rtsp://secret-cam.team-b/live", MEDIA)
    assert "team-b/cam-creds not found" in exc.reason
    assert set(secret_reads(kube)) == {"/api/v1/namespaces/team-b/secrets/cam-creds"}
    # A namespace in the annotation is refused before anything is read.
    for name in ("media/cam-creds", "../media/secrets/cam-creds", "Cam-Creds", "a" * 300):
        svc["metadata"]["annotations"][CREDENTIALS_SECRET] = name
        kube.put("services", svc)
        for _ in range(100):
            exc = await failure(resolver, "rtsp://secret-cam.team-b/live", MEDIA)
            if "must be the name of a Secret in namespace team-b" in exc.reason:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail(f"annotation {name!r} was not refused")
        reads = len(kube.requests)
        await failure(resolver, "rtsp://secret-cam.team-b/live", MEDIA)
        assert not [r for r in kube.requests[reads:] if "/secrets" in r], name
    assert set(secret_reads(kube)) == {"/api/v1/namespaces/team-b/secrets/cam-creds"}   # media's: never


async def test_a_changed_secret_is_picked_up(kube: FakeKube, tmp_path: Path) -> None:
    client = KubeClient.from_kubeconfig(str(kube.kubeconfig(tmp_path / "kubeconfig")))
    resolver = KubernetesResolver(client, secret_ttl=0.3)
    await resolver.start()
    try:
        kube.put("secrets", secret("media", "cam-creds", {"username": "admin", "password": "old"}))
        annotate(kube, {CREDENTIALS_SECRET: "cam-creds"})
        assert credentials_of(await with_secret(resolver)) == ("admin", "old")
        kube.put("secrets", secret("media", "cam-creds", {"username": "admin", "password": "new"}))
        # Within the ttl the cached value serves (one GET for many opens), after it the new one.
        assert credentials_of((await resolver.resolve(CAMERA, MEDIA)).url) == ("admin", "old")
        reads = len(secret_reads(kube))
        await asyncio.sleep(0.35)
        assert credentials_of((await resolver.resolve(CAMERA, MEDIA)).url) == ("admin", "new")
        assert len(secret_reads(kube)) == reads + 1
        # Deleted: the next open after the ttl fails; failures are not cached, so re-created works at once.
        kube.objects["secrets"].pop(("media", "cam-creds"))
        await asyncio.sleep(0.35)
        with pytest.raises(errors.Unavailable, match="not found"):
            await resolver.resolve(CAMERA, MEDIA)
        kube.put("secrets", secret("media", "cam-creds", {"username": "ops", "password": "again"}))
        assert credentials_of((await resolver.resolve(CAMERA, MEDIA)).url) == ("ops", "again")
    finally:
        await resolver.stop()


async def test_the_secret_cache_is_bounded(kube: FakeKube, resolver: KubernetesResolver) -> None:
    resolver.secrets.size = 3
    for i in range(10):
        kube.put("secrets", secret("media", f"c{i}", {"username": f"u{i}", "password": "p"}))
        annotate(kube, {CREDENTIALS_SECRET: f"c{i}"})
        for _ in range(100):
            url = await with_secret(resolver)
            if credentials_of(url) == (f"u{i}", "p"):
                break
            await asyncio.sleep(0.02)
        assert len(resolver.secrets._entries) <= 3
    assert [name for _, name in resolver.secrets._entries] == ["c7", "c8", "c9"]
