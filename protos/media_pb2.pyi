from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GroupRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_ROLE_UNSPECIFIED: _ClassVar[GroupRole]
    GROUP_ROLE_SENDER: _ClassVar[GroupRole]
    GROUP_ROLE_RECEIVER: _ClassVar[GroupRole]
GROUP_ROLE_UNSPECIFIED: GroupRole
GROUP_ROLE_SENDER: GroupRole
GROUP_ROLE_RECEIVER: GroupRole

class FabricAddress(_message.Message):
    __slots__ = ("provider", "address")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    address: bytes
    def __init__(self, provider: _Optional[str] = ..., address: _Optional[bytes] = ...) -> None: ...

class FabricAnnouncement(_message.Message):
    __slots__ = ("node", "proxy_id", "endpoints", "members")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PROXY_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    node: str
    proxy_id: str
    endpoints: _containers.RepeatedCompositeFieldContainer[FabricAddress]
    members: _containers.RepeatedCompositeFieldContainer[GroupJoin]
    def __init__(self, node: _Optional[str] = ..., proxy_id: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[FabricAddress, _Mapping]]] = ..., members: _Optional[_Iterable[_Union[GroupJoin, _Mapping]]] = ...) -> None: ...

class GroupJoin(_message.Message):
    __slots__ = ("urn", "node", "member", "role", "provider", "max_frame")
    URN_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    urn: str
    node: str
    member: str
    role: GroupRole
    provider: str
    max_frame: int
    def __init__(self, urn: _Optional[str] = ..., node: _Optional[str] = ..., member: _Optional[str] = ..., role: _Optional[_Union[GroupRole, str]] = ..., provider: _Optional[str] = ..., max_frame: _Optional[int] = ...) -> None: ...

class GroupLeave(_message.Message):
    __slots__ = ("urn", "node", "member", "role")
    URN_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    urn: str
    node: str
    member: str
    role: GroupRole
    def __init__(self, urn: _Optional[str] = ..., node: _Optional[str] = ..., member: _Optional[str] = ..., role: _Optional[_Union[GroupRole, str]] = ...) -> None: ...

class NodePlacement(_message.Message):
    __slots__ = ("node", "members", "provider", "linked", "error")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    LINKED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node: str
    members: int
    provider: str
    linked: bool
    error: str
    def __init__(self, node: _Optional[str] = ..., members: _Optional[int] = ..., provider: _Optional[str] = ..., linked: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class GroupPlacement(_message.Message):
    __slots__ = ("urn", "sender_node", "sender_member", "max_frame", "receivers")
    URN_FIELD_NUMBER: _ClassVar[int]
    SENDER_NODE_FIELD_NUMBER: _ClassVar[int]
    SENDER_MEMBER_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    RECEIVERS_FIELD_NUMBER: _ClassVar[int]
    urn: str
    sender_node: str
    sender_member: str
    max_frame: int
    receivers: _containers.RepeatedCompositeFieldContainer[NodePlacement]
    def __init__(self, urn: _Optional[str] = ..., sender_node: _Optional[str] = ..., sender_member: _Optional[str] = ..., max_frame: _Optional[int] = ..., receivers: _Optional[_Iterable[_Union[NodePlacement, _Mapping]]] = ...) -> None: ...

class ListPlacementsRequest(_message.Message):
    __slots__ = ("with_stats",)
    WITH_STATS_FIELD_NUMBER: _ClassVar[int]
    with_stats: bool
    def __init__(self, with_stats: _Optional[bool] = ...) -> None: ...

class NodeMediaStats(_message.Message):
    __slots__ = ("node", "stats", "error")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node: str
    stats: ListGroupsReply
    error: str
    def __init__(self, node: _Optional[str] = ..., stats: _Optional[_Union[ListGroupsReply, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class ListPlacementsReply(_message.Message):
    __slots__ = ("groups", "nodes")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupPlacement]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeMediaStats]
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupPlacement, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[NodeMediaStats, _Mapping]]] = ...) -> None: ...

class OpenGroupLinkRequest(_message.Message):
    __slots__ = ("urn", "peer_node", "provider", "peer_address", "max_frame", "credits", "link_id")
    URN_FIELD_NUMBER: _ClassVar[int]
    PEER_NODE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    urn: str
    peer_node: str
    provider: str
    peer_address: bytes
    max_frame: int
    credits: int
    link_id: int
    def __init__(self, urn: _Optional[str] = ..., peer_node: _Optional[str] = ..., provider: _Optional[str] = ..., peer_address: _Optional[bytes] = ..., max_frame: _Optional[int] = ..., credits: _Optional[int] = ..., link_id: _Optional[int] = ...) -> None: ...

class CloseGroupLinkRequest(_message.Message):
    __slots__ = ("urn", "peer_node")
    URN_FIELD_NUMBER: _ClassVar[int]
    PEER_NODE_FIELD_NUMBER: _ClassVar[int]
    urn: str
    peer_node: str
    def __init__(self, urn: _Optional[str] = ..., peer_node: _Optional[str] = ...) -> None: ...

class ExpectGroupRequest(_message.Message):
    __slots__ = ("urn", "peer_node", "provider", "peer_address", "max_frame", "link_id")
    URN_FIELD_NUMBER: _ClassVar[int]
    PEER_NODE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    urn: str
    peer_node: str
    provider: str
    peer_address: bytes
    max_frame: int
    link_id: int
    def __init__(self, urn: _Optional[str] = ..., peer_node: _Optional[str] = ..., provider: _Optional[str] = ..., peer_address: _Optional[bytes] = ..., max_frame: _Optional[int] = ..., link_id: _Optional[int] = ...) -> None: ...

class ForgetGroupRequest(_message.Message):
    __slots__ = ("urn", "peer_node")
    URN_FIELD_NUMBER: _ClassVar[int]
    PEER_NODE_FIELD_NUMBER: _ClassVar[int]
    urn: str
    peer_node: str
    def __init__(self, urn: _Optional[str] = ..., peer_node: _Optional[str] = ...) -> None: ...

class ListGroupsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GroupReceiverStats(_message.Message):
    __slots__ = ("name", "frames", "bytes", "drops", "has_latency", "latency_p50_us", "latency_p99_us")
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    HAS_LATENCY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_US_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_US_FIELD_NUMBER: _ClassVar[int]
    name: str
    frames: int
    bytes: int
    drops: _containers.ScalarMap[str, int]
    has_latency: bool
    latency_p50_us: float
    latency_p99_us: float
    def __init__(self, name: _Optional[str] = ..., frames: _Optional[int] = ..., bytes: _Optional[int] = ..., drops: _Optional[_Mapping[str, int]] = ..., has_latency: _Optional[bool] = ..., latency_p50_us: _Optional[float] = ..., latency_p99_us: _Optional[float] = ...) -> None: ...

class GroupLinkStats(_message.Message):
    __slots__ = ("peer_node", "provider", "outgoing", "frames", "bytes", "in_flight")
    PEER_NODE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    peer_node: str
    provider: str
    outgoing: bool
    frames: int
    bytes: int
    in_flight: int
    def __init__(self, peer_node: _Optional[str] = ..., provider: _Optional[str] = ..., outgoing: _Optional[bool] = ..., frames: _Optional[int] = ..., bytes: _Optional[int] = ..., in_flight: _Optional[int] = ...) -> None: ...

class GroupStats(_message.Message):
    __slots__ = ("urn", "sender", "frames_in", "bytes_in", "incomplete", "receivers", "links")
    class IncompleteEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    URN_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    FRAMES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_FIELD_NUMBER: _ClassVar[int]
    RECEIVERS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    urn: str
    sender: str
    frames_in: int
    bytes_in: int
    incomplete: _containers.ScalarMap[str, int]
    receivers: _containers.RepeatedCompositeFieldContainer[GroupReceiverStats]
    links: _containers.RepeatedCompositeFieldContainer[GroupLinkStats]
    def __init__(self, urn: _Optional[str] = ..., sender: _Optional[str] = ..., frames_in: _Optional[int] = ..., bytes_in: _Optional[int] = ..., incomplete: _Optional[_Mapping[str, int]] = ..., receivers: _Optional[_Iterable[_Union[GroupReceiverStats, _Mapping]]] = ..., links: _Optional[_Iterable[_Union[GroupLinkStats, _Mapping]]] = ...) -> None: ...

class BridgeStats(_message.Message):
    __slots__ = ("name", "direction", "group", "address", "pacing", "pacing_class", "frames", "bytes", "packets", "lost_packets", "incomplete", "dropped", "queue_depth", "late_packets")
    class IncompleteEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PACING_FIELD_NUMBER: _ClassVar[int]
    PACING_CLASS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    LOST_PACKETS_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    LATE_PACKETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    direction: str
    group: str
    address: str
    pacing: str
    pacing_class: str
    frames: int
    bytes: int
    packets: int
    lost_packets: int
    incomplete: _containers.ScalarMap[str, int]
    dropped: _containers.ScalarMap[str, int]
    queue_depth: int
    late_packets: int
    def __init__(self, name: _Optional[str] = ..., direction: _Optional[str] = ..., group: _Optional[str] = ..., address: _Optional[str] = ..., pacing: _Optional[str] = ..., pacing_class: _Optional[str] = ..., frames: _Optional[int] = ..., bytes: _Optional[int] = ..., packets: _Optional[int] = ..., lost_packets: _Optional[int] = ..., incomplete: _Optional[_Mapping[str, int]] = ..., dropped: _Optional[_Mapping[str, int]] = ..., queue_depth: _Optional[int] = ..., late_packets: _Optional[int] = ...) -> None: ...

class ConnectionStats(_message.Message):
    __slots__ = ("connection", "app", "direction", "target", "pid", "uid", "attached", "frames", "bytes", "drops", "queue_depth", "has_latency", "latency_p50_us", "latency_p99_us")
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    HAS_LATENCY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_US_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_US_FIELD_NUMBER: _ClassVar[int]
    connection: str
    app: str
    direction: str
    target: str
    pid: int
    uid: int
    attached: bool
    frames: int
    bytes: int
    drops: _containers.ScalarMap[str, int]
    queue_depth: int
    has_latency: bool
    latency_p50_us: float
    latency_p99_us: float
    def __init__(self, connection: _Optional[str] = ..., app: _Optional[str] = ..., direction: _Optional[str] = ..., target: _Optional[str] = ..., pid: _Optional[int] = ..., uid: _Optional[int] = ..., attached: _Optional[bool] = ..., frames: _Optional[int] = ..., bytes: _Optional[int] = ..., drops: _Optional[_Mapping[str, int]] = ..., queue_depth: _Optional[int] = ..., has_latency: _Optional[bool] = ..., latency_p50_us: _Optional[float] = ..., latency_p99_us: _Optional[float] = ...) -> None: ...

class ListGroupsReply(_message.Message):
    __slots__ = ("node", "groups", "dropped", "endpoints", "bridges", "connections", "apps", "left_out")
    class DroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    BRIDGES_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    APPS_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    node: str
    groups: _containers.RepeatedCompositeFieldContainer[GroupStats]
    dropped: _containers.ScalarMap[str, int]
    endpoints: _containers.RepeatedCompositeFieldContainer[FabricAddress]
    bridges: _containers.RepeatedCompositeFieldContainer[BridgeStats]
    connections: _containers.RepeatedCompositeFieldContainer[ConnectionStats]
    apps: int
    left_out: int
    def __init__(self, node: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[GroupStats, _Mapping]]] = ..., dropped: _Optional[_Mapping[str, int]] = ..., endpoints: _Optional[_Iterable[_Union[FabricAddress, _Mapping]]] = ..., bridges: _Optional[_Iterable[_Union[BridgeStats, _Mapping]]] = ..., connections: _Optional[_Iterable[_Union[ConnectionStats, _Mapping]]] = ..., apps: _Optional[int] = ..., left_out: _Optional[int] = ...) -> None: ...

class MediaAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
