"""The Kubernetes resolver against recorded API objects (served by tests/fake_kube.py)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from msm.control_plane.kubernetes import KubeClient, KubeError, KubernetesResolver
from msm.control_plane.resolver import Asker, NotFound, RouteError, parse_route
from msm.sdk import errors
from tests.fake_kube import FakeKube, load

pytestmark = pytest.mark.timeout(30)


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
    route = await resolver.resolve(url)
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
    route = await resolver.resolve("rtsp://some-alias/live/1", Asker(original_dst="10.96.0.10:554"))
    assert route.url == "rtsp://10.244.0.5:8554/live/1"
    for garbage in ("10.96.0.10", "10.96.0.10:http", "[10.96.0.10]:554", ""):
        with pytest.raises(NotFound):
            await resolver.resolve("rtsp://some-alias/live/1", Asker(original_dst=garbage))


def test_errors_are_leaves_of_the_msm_tree() -> None:
    """The names control_plane imports from here are the tree's classes, with the tree's codes."""
    assert KubeError is errors.KubeError and NotFound is errors.NotFound
    assert (NotFound("x").status, NotFound("x").grpc_code) == (404, "NOT_FOUND")
    with pytest.raises(RouteError) as caught:
        parse_route("no-url-here")
    assert isinstance(caught.value, errors.ConfigError) and "NAME=rtsp://" in caught.value.reason


async def test_unknown_service_and_port(resolver: KubernetesResolver) -> None:
    with pytest.raises(NotFound):
        await resolver.resolve("rtsp://nope.media/x")
    with pytest.raises(NotFound):
        await resolver.resolve("rtsp://camera-svc.media:1234/x")


async def test_watch_follows_endpoint_changes(kube: FakeKube, resolver: KubernetesResolver) -> None:
    slice_ = copy.deepcopy(load("resolver_endpointslices.json")["items"][0])
    slice_["endpoints"][1]["conditions"]["ready"] = False      # the camera pod goes unready...
    slice_["endpoints"][0]["conditions"] = {"ready": True, "serving": True, "terminating": False}
    kube.put("endpointslices", slice_)
    for _ in range(50):
        await asyncio.sleep(0.05)
        route = await resolver.resolve("rtsp://camera-svc.media/live/1")
        if route.node == "node-b":
            break
    assert (route.url, route.node) == ("rtsp://10.244.1.7:8554/live/1", "node-b")   # ...another takes over
    kube.delete("services", "media", "camera-svc")
    for _ in range(50):
        await asyncio.sleep(0.05)
        try:
            await resolver.resolve("rtsp://camera-svc.media/live/1")
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
