from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Endpoint(_message.Message):
    __slots__ = ("host", "rtp_port", "rtcp_port")
    HOST_FIELD_NUMBER: _ClassVar[int]
    RTP_PORT_FIELD_NUMBER: _ClassVar[int]
    RTCP_PORT_FIELD_NUMBER: _ClassVar[int]
    host: str
    rtp_port: int
    rtcp_port: int
    def __init__(self, host: _Optional[str] = ..., rtp_port: _Optional[int] = ..., rtcp_port: _Optional[int] = ...) -> None: ...

class Track(_message.Message):
    __slots__ = ("index", "kind", "control", "clock_rate", "encoding")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    CLOCK_RATE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    index: int
    kind: str
    control: str
    clock_rate: int
    encoding: str
    def __init__(self, index: _Optional[int] = ..., kind: _Optional[str] = ..., control: _Optional[str] = ..., clock_rate: _Optional[int] = ..., encoding: _Optional[str] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class CertificateRequest(_message.Message):
    __slots__ = ("csr_pem", "token", "role")
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    token: str
    role: str
    def __init__(self, csr_pem: _Optional[bytes] = ..., token: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class CertificateReply(_message.Message):
    __slots__ = ("certificate_chain_pem", "trust_bundle_pem", "not_after_unix")
    CERTIFICATE_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    certificate_chain_pem: bytes
    trust_bundle_pem: bytes
    not_after_unix: int
    def __init__(self, certificate_chain_pem: _Optional[bytes] = ..., trust_bundle_pem: _Optional[bytes] = ..., not_after_unix: _Optional[int] = ...) -> None: ...

class StubRegister(_message.Message):
    __slots__ = ("stub_id", "node", "pod", "namespace", "pod_ip", "can_open_upstream")
    STUB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_IP_FIELD_NUMBER: _ClassVar[int]
    CAN_OPEN_UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    stub_id: str
    node: str
    pod: str
    namespace: str
    pod_ip: str
    can_open_upstream: bool
    def __init__(self, stub_id: _Optional[str] = ..., node: _Optional[str] = ..., pod: _Optional[str] = ..., namespace: _Optional[str] = ..., pod_ip: _Optional[str] = ..., can_open_upstream: _Optional[bool] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ("url", "viewer_host", "original_dst")
    URL_FIELD_NUMBER: _ClassVar[int]
    VIEWER_HOST_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_DST_FIELD_NUMBER: _ClassVar[int]
    url: str
    viewer_host: str
    original_dst: str
    def __init__(self, url: _Optional[str] = ..., viewer_host: _Optional[str] = ..., original_dst: _Optional[str] = ...) -> None: ...

class DescribeReply(_message.Message):
    __slots__ = ("stream_id", "sdp", "tracks", "multicast_group", "multicast_ttl")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SDP_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    MULTICAST_GROUP_FIELD_NUMBER: _ClassVar[int]
    MULTICAST_TTL_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    sdp: str
    tracks: _containers.RepeatedCompositeFieldContainer[Track]
    multicast_group: Endpoint
    multicast_ttl: int
    def __init__(self, stream_id: _Optional[str] = ..., sdp: _Optional[str] = ..., tracks: _Optional[_Iterable[_Union[Track, _Mapping]]] = ..., multicast_group: _Optional[_Union[Endpoint, _Mapping]] = ..., multicast_ttl: _Optional[int] = ...) -> None: ...

class SetupRequest(_message.Message):
    __slots__ = ("original_dst", "url", "stream_id", "track_index", "session_id", "destination", "viewer_host", "multicast")
    ORIGINAL_DST_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    TRACK_INDEX_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    VIEWER_HOST_FIELD_NUMBER: _ClassVar[int]
    MULTICAST_FIELD_NUMBER: _ClassVar[int]
    original_dst: str
    url: str
    stream_id: str
    track_index: int
    session_id: str
    destination: Endpoint
    viewer_host: str
    multicast: bool
    def __init__(self, original_dst: _Optional[str] = ..., url: _Optional[str] = ..., stream_id: _Optional[str] = ..., track_index: _Optional[int] = ..., session_id: _Optional[str] = ..., destination: _Optional[_Union[Endpoint, _Mapping]] = ..., viewer_host: _Optional[str] = ..., multicast: _Optional[bool] = ...) -> None: ...

class SetupReply(_message.Message):
    __slots__ = ("stream_id", "track_index", "source", "ssrc", "group", "ttl")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    TRACK_INDEX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SSRC_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    track_index: int
    source: Endpoint
    ssrc: int
    group: Endpoint
    ttl: int
    def __init__(self, stream_id: _Optional[str] = ..., track_index: _Optional[int] = ..., source: _Optional[_Union[Endpoint, _Mapping]] = ..., ssrc: _Optional[int] = ..., group: _Optional[_Union[Endpoint, _Mapping]] = ..., ttl: _Optional[int] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("stream_id", "session_id", "track_indexes")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACK_INDEXES_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    session_id: str
    track_indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, stream_id: _Optional[str] = ..., session_id: _Optional[str] = ..., track_indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class SessionReply(_message.Message):
    __slots__ = ("range", "rtp_info")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    RTP_INFO_FIELD_NUMBER: _ClassVar[int]
    range: str
    rtp_info: _containers.RepeatedCompositeFieldContainer[RtpInfo]
    def __init__(self, range: _Optional[str] = ..., rtp_info: _Optional[_Iterable[_Union[RtpInfo, _Mapping]]] = ...) -> None: ...

class RtpInfo(_message.Message):
    __slots__ = ("track_index", "seq", "rtptime")
    TRACK_INDEX_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RTPTIME_FIELD_NUMBER: _ClassVar[int]
    track_index: int
    seq: int
    rtptime: int
    def __init__(self, track_index: _Optional[int] = ..., seq: _Optional[int] = ..., rtptime: _Optional[int] = ...) -> None: ...

class StubRequest(_message.Message):
    __slots__ = ("request_id", "describe", "setup", "play", "pause", "teardown")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIBE_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    PLAY_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    TEARDOWN_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    describe: DescribeRequest
    setup: SetupRequest
    play: SessionRequest
    pause: SessionRequest
    teardown: SessionRequest
    def __init__(self, request_id: _Optional[int] = ..., describe: _Optional[_Union[DescribeRequest, _Mapping]] = ..., setup: _Optional[_Union[SetupRequest, _Mapping]] = ..., play: _Optional[_Union[SessionRequest, _Mapping]] = ..., pause: _Optional[_Union[SessionRequest, _Mapping]] = ..., teardown: _Optional[_Union[SessionRequest, _Mapping]] = ...) -> None: ...

class ControlReply(_message.Message):
    __slots__ = ("request_id", "status", "describe", "setup", "session")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DESCRIBE_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    status: Status
    describe: DescribeReply
    setup: SetupReply
    session: SessionReply
    def __init__(self, request_id: _Optional[int] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., describe: _Optional[_Union[DescribeReply, _Mapping]] = ..., setup: _Optional[_Union[SetupReply, _Mapping]] = ..., session: _Optional[_Union[SessionReply, _Mapping]] = ...) -> None: ...

class OpenUpstream(_message.Message):
    __slots__ = ("stream_id", "url", "transport")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    url: str
    transport: str
    def __init__(self, stream_id: _Optional[str] = ..., url: _Optional[str] = ..., transport: _Optional[str] = ...) -> None: ...

class SetupUpstream(_message.Message):
    __slots__ = ("stream_id", "track_indexes", "destinations")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    TRACK_INDEXES_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    track_indexes: _containers.RepeatedScalarFieldContainer[int]
    destinations: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, stream_id: _Optional[str] = ..., track_indexes: _Optional[_Iterable[int]] = ..., destinations: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class PlayUpstream(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    def __init__(self, stream_id: _Optional[str] = ...) -> None: ...

class CloseUpstream(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    def __init__(self, stream_id: _Optional[str] = ...) -> None: ...

class ControlCommand(_message.Message):
    __slots__ = ("command_id", "open", "setup", "play", "close")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    PLAY_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    command_id: int
    open: OpenUpstream
    setup: SetupUpstream
    play: PlayUpstream
    close: CloseUpstream
    def __init__(self, command_id: _Optional[int] = ..., open: _Optional[_Union[OpenUpstream, _Mapping]] = ..., setup: _Optional[_Union[SetupUpstream, _Mapping]] = ..., play: _Optional[_Union[PlayUpstream, _Mapping]] = ..., close: _Optional[_Union[CloseUpstream, _Mapping]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "status", "sdp", "tracks", "sources")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SDP_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    command_id: int
    status: Status
    sdp: str
    tracks: _containers.RepeatedCompositeFieldContainer[Track]
    sources: _containers.RepeatedCompositeFieldContainer[SourceFilter]
    def __init__(self, command_id: _Optional[int] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., sdp: _Optional[str] = ..., tracks: _Optional[_Iterable[_Union[Track, _Mapping]]] = ..., sources: _Optional[_Iterable[_Union[SourceFilter, _Mapping]]] = ...) -> None: ...

class UpstreamEvent(_message.Message):
    __slots__ = ("stream_id", "state", "detail", "cause", "sources")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[UpstreamEvent.State]
        CONNECTING: _ClassVar[UpstreamEvent.State]
        PLAYING: _ClassVar[UpstreamEvent.State]
        DOWN: _ClassVar[UpstreamEvent.State]
    UNKNOWN: UpstreamEvent.State
    CONNECTING: UpstreamEvent.State
    PLAYING: UpstreamEvent.State
    DOWN: UpstreamEvent.State
    class Cause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CAUSE_UNSPECIFIED: _ClassVar[UpstreamEvent.Cause]
        STARTED: _ClassVar[UpstreamEvent.Cause]
        CONNECTION_LOST: _ClassVar[UpstreamEvent.Cause]
        RECONNECT_ATTEMPT: _ClassVar[UpstreamEvent.Cause]
        RECONNECTED: _ClassVar[UpstreamEvent.Cause]
    CAUSE_UNSPECIFIED: UpstreamEvent.Cause
    STARTED: UpstreamEvent.Cause
    CONNECTION_LOST: UpstreamEvent.Cause
    RECONNECT_ATTEMPT: UpstreamEvent.Cause
    RECONNECTED: UpstreamEvent.Cause
    class SourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: SourceFilter
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[SourceFilter, _Mapping]] = ...) -> None: ...
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    state: UpstreamEvent.State
    detail: str
    cause: UpstreamEvent.Cause
    sources: _containers.MessageMap[int, SourceFilter]
    def __init__(self, stream_id: _Optional[str] = ..., state: _Optional[_Union[UpstreamEvent.State, str]] = ..., detail: _Optional[str] = ..., cause: _Optional[_Union[UpstreamEvent.Cause, str]] = ..., sources: _Optional[_Mapping[int, SourceFilter]] = ...) -> None: ...

class StubMessage(_message.Message):
    __slots__ = ("register", "request", "result", "event", "viewer_gone")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    VIEWER_GONE_FIELD_NUMBER: _ClassVar[int]
    register: StubRegister
    request: StubRequest
    result: CommandResult
    event: UpstreamEvent
    viewer_gone: ViewerGone
    def __init__(self, register: _Optional[_Union[StubRegister, _Mapping]] = ..., request: _Optional[_Union[StubRequest, _Mapping]] = ..., result: _Optional[_Union[CommandResult, _Mapping]] = ..., event: _Optional[_Union[UpstreamEvent, _Mapping]] = ..., viewer_gone: _Optional[_Union[ViewerGone, _Mapping]] = ...) -> None: ...

class ViewerGone(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StreamState(_message.Message):
    __slots__ = ("stream_id", "upstream_up")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_UP_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    upstream_up: bool
    def __init__(self, stream_id: _Optional[str] = ..., upstream_up: _Optional[bool] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("reply", "command", "stream_state", "sessions_alive")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    STREAM_STATE_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_ALIVE_FIELD_NUMBER: _ClassVar[int]
    reply: ControlReply
    command: ControlCommand
    stream_state: StreamState
    sessions_alive: SessionsAlive
    def __init__(self, reply: _Optional[_Union[ControlReply, _Mapping]] = ..., command: _Optional[_Union[ControlCommand, _Mapping]] = ..., stream_state: _Optional[_Union[StreamState, _Mapping]] = ..., sessions_alive: _Optional[_Union[SessionsAlive, _Mapping]] = ...) -> None: ...

class SessionsAlive(_message.Message):
    __slots__ = ("session_ids",)
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ProxyHello(_message.Message):
    __slots__ = ("node", "dataplane_address", "media_host", "proxy_id", "srtp_profiles")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_HOST_FIELD_NUMBER: _ClassVar[int]
    PROXY_ID_FIELD_NUMBER: _ClassVar[int]
    SRTP_PROFILES_FIELD_NUMBER: _ClassVar[int]
    node: str
    dataplane_address: str
    media_host: str
    proxy_id: str
    srtp_profiles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[str] = ..., dataplane_address: _Optional[str] = ..., media_host: _Optional[str] = ..., proxy_id: _Optional[str] = ..., srtp_profiles: _Optional[_Iterable[str]] = ...) -> None: ...

class ProxyMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "legs_heard")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    LEGS_HEARD_FIELD_NUMBER: _ClassVar[int]
    hello: ProxyHello
    heartbeat: Heartbeat
    legs_heard: LegsHeard
    def __init__(self, hello: _Optional[_Union[ProxyHello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., legs_heard: _Optional[_Union[LegsHeard, _Mapping]] = ...) -> None: ...

class LegsHeard(_message.Message):
    __slots__ = ("legs",)
    LEGS_FIELD_NUMBER: _ClassVar[int]
    legs: _containers.RepeatedCompositeFieldContainer[LegKey]
    def __init__(self, legs: _Optional[_Iterable[_Union[LegKey, _Mapping]]] = ...) -> None: ...

class LegKey(_message.Message):
    __slots__ = ("flow_id", "leg_id")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    leg_id: str
    def __init__(self, flow_id: _Optional[str] = ..., leg_id: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class ProxyAck(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class ListStreamsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ViewerInfo(_message.Message):
    __slots__ = ("session_id", "session_tag", "host", "playing", "legs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TAG_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PLAYING_FIELD_NUMBER: _ClassVar[int]
    LEGS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    session_tag: str
    host: str
    playing: bool
    legs: _containers.RepeatedCompositeFieldContainer[LegStats]
    def __init__(self, session_id: _Optional[str] = ..., session_tag: _Optional[str] = ..., host: _Optional[str] = ..., playing: _Optional[bool] = ..., legs: _Optional[_Iterable[_Union[LegStats, _Mapping]]] = ...) -> None: ...

class TrackStats(_message.Message):
    __slots__ = ("track", "flow", "relays")
    TRACK_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    RELAYS_FIELD_NUMBER: _ClassVar[int]
    track: Track
    flow: FlowStats
    relays: _containers.RepeatedCompositeFieldContainer[FlowStats]
    def __init__(self, track: _Optional[_Union[Track, _Mapping]] = ..., flow: _Optional[_Union[FlowStats, _Mapping]] = ..., relays: _Optional[_Iterable[_Union[FlowStats, _Mapping]]] = ...) -> None: ...

class StreamInfo(_message.Message):
    __slots__ = ("stream_id", "name", "upstream_url", "upstream_state", "viewers", "tracks", "upstream_sessions_opened")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_URL_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_STATE_FIELD_NUMBER: _ClassVar[int]
    VIEWERS_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_SESSIONS_OPENED_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    name: str
    upstream_url: str
    upstream_state: str
    viewers: _containers.RepeatedCompositeFieldContainer[ViewerInfo]
    tracks: _containers.RepeatedCompositeFieldContainer[TrackStats]
    upstream_sessions_opened: int
    def __init__(self, stream_id: _Optional[str] = ..., name: _Optional[str] = ..., upstream_url: _Optional[str] = ..., upstream_state: _Optional[str] = ..., viewers: _Optional[_Iterable[_Union[ViewerInfo, _Mapping]]] = ..., tracks: _Optional[_Iterable[_Union[TrackStats, _Mapping]]] = ..., upstream_sessions_opened: _Optional[int] = ...) -> None: ...

class ListStreamsResponse(_message.Message):
    __slots__ = ("streams",)
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.RepeatedCompositeFieldContainer[StreamInfo]
    def __init__(self, streams: _Optional[_Iterable[_Union[StreamInfo, _Mapping]]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SourceFilter(_message.Message):
    __slots__ = ("host", "rtp_port", "rtcp_port", "group")
    HOST_FIELD_NUMBER: _ClassVar[int]
    RTP_PORT_FIELD_NUMBER: _ClassVar[int]
    RTCP_PORT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    host: str
    rtp_port: int
    rtcp_port: int
    group: Endpoint
    def __init__(self, host: _Optional[str] = ..., rtp_port: _Optional[int] = ..., rtcp_port: _Optional[int] = ..., group: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class SrtpParams(_message.Message):
    __slots__ = ("profile", "master_key", "master_salt", "epoch")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    MASTER_KEY_FIELD_NUMBER: _ClassVar[int]
    MASTER_SALT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    profile: str
    master_key: bytes
    master_salt: bytes
    epoch: int
    def __init__(self, profile: _Optional[str] = ..., master_key: _Optional[bytes] = ..., master_salt: _Optional[bytes] = ..., epoch: _Optional[int] = ...) -> None: ...

class AddFlowRequest(_message.Message):
    __slots__ = ("flow_id", "clock_rate", "bind_host", "splice", "labels", "source", "srtp", "listen", "ssm")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_RATE_FIELD_NUMBER: _ClassVar[int]
    BIND_HOST_FIELD_NUMBER: _ClassVar[int]
    SPLICE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    SSM_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    clock_rate: int
    bind_host: str
    splice: bool
    labels: _containers.ScalarMap[str, str]
    source: SourceFilter
    srtp: SrtpParams
    listen: Endpoint
    ssm: bool
    def __init__(self, flow_id: _Optional[str] = ..., clock_rate: _Optional[int] = ..., bind_host: _Optional[str] = ..., splice: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., source: _Optional[_Union[SourceFilter, _Mapping]] = ..., srtp: _Optional[_Union[SrtpParams, _Mapping]] = ..., listen: _Optional[_Union[Endpoint, _Mapping]] = ..., ssm: _Optional[bool] = ...) -> None: ...

class SetFlowSourceRequest(_message.Message):
    __slots__ = ("flow_id", "source")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    source: SourceFilter
    def __init__(self, flow_id: _Optional[str] = ..., source: _Optional[_Union[SourceFilter, _Mapping]] = ...) -> None: ...

class RekeyRequest(_message.Message):
    __slots__ = ("flow_id", "leg_id", "srtp")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    leg_id: str
    srtp: SrtpParams
    def __init__(self, flow_id: _Optional[str] = ..., leg_id: _Optional[str] = ..., srtp: _Optional[_Union[SrtpParams, _Mapping]] = ...) -> None: ...

class AddFlowReply(_message.Message):
    __slots__ = ("ingress",)
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    ingress: Endpoint
    def __init__(self, ingress: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class RemoveFlowRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class AddLegRequest(_message.Message):
    __slots__ = ("flow_id", "leg_id", "destination", "enabled", "labels", "srtp", "multicast_ttl")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    MULTICAST_TTL_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    leg_id: str
    destination: Endpoint
    enabled: bool
    labels: _containers.ScalarMap[str, str]
    srtp: SrtpParams
    multicast_ttl: int
    def __init__(self, flow_id: _Optional[str] = ..., leg_id: _Optional[str] = ..., destination: _Optional[_Union[Endpoint, _Mapping]] = ..., enabled: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., srtp: _Optional[_Union[SrtpParams, _Mapping]] = ..., multicast_ttl: _Optional[int] = ...) -> None: ...

class UpdateLegRequest(_message.Message):
    __slots__ = ("flow_id", "leg_id", "enabled")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    leg_id: str
    enabled: bool
    def __init__(self, flow_id: _Optional[str] = ..., leg_id: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class RemoveLegRequest(_message.Message):
    __slots__ = ("flow_id", "leg_id")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    leg_id: str
    def __init__(self, flow_id: _Optional[str] = ..., leg_id: _Optional[str] = ...) -> None: ...

class ListFlowsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchStatsRequest(_message.Message):
    __slots__ = ("interval_seconds",)
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    def __init__(self, interval_seconds: _Optional[float] = ...) -> None: ...

class LegStats(_message.Message):
    __slots__ = ("leg_id", "destination", "enabled", "packets_sent", "bytes_sent", "rtcp_sent", "send_errors", "rtcp_received", "flow_id", "has_report", "viewer_fraction_lost", "viewer_packets_lost", "viewer_jitter_ms", "rtt_ms", "dropped_backlog", "labels", "srtp", "mtu_exceeded", "path_mtu")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LEG_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    RTCP_SENT_FIELD_NUMBER: _ClassVar[int]
    SEND_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RTCP_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_REPORT_FIELD_NUMBER: _ClassVar[int]
    VIEWER_FRACTION_LOST_FIELD_NUMBER: _ClassVar[int]
    VIEWER_PACKETS_LOST_FIELD_NUMBER: _ClassVar[int]
    VIEWER_JITTER_MS_FIELD_NUMBER: _ClassVar[int]
    RTT_MS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BACKLOG_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    MTU_EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    PATH_MTU_FIELD_NUMBER: _ClassVar[int]
    leg_id: str
    destination: Endpoint
    enabled: bool
    packets_sent: int
    bytes_sent: int
    rtcp_sent: int
    send_errors: int
    rtcp_received: int
    flow_id: str
    has_report: bool
    viewer_fraction_lost: float
    viewer_packets_lost: int
    viewer_jitter_ms: float
    rtt_ms: float
    dropped_backlog: int
    labels: _containers.ScalarMap[str, str]
    srtp: bool
    mtu_exceeded: int
    path_mtu: int
    def __init__(self, leg_id: _Optional[str] = ..., destination: _Optional[_Union[Endpoint, _Mapping]] = ..., enabled: _Optional[bool] = ..., packets_sent: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., rtcp_sent: _Optional[int] = ..., send_errors: _Optional[int] = ..., rtcp_received: _Optional[int] = ..., flow_id: _Optional[str] = ..., has_report: _Optional[bool] = ..., viewer_fraction_lost: _Optional[float] = ..., viewer_packets_lost: _Optional[int] = ..., viewer_jitter_ms: _Optional[float] = ..., rtt_ms: _Optional[float] = ..., dropped_backlog: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., srtp: _Optional[bool] = ..., mtu_exceeded: _Optional[int] = ..., path_mtu: _Optional[int] = ...) -> None: ...

class FlowStats(_message.Message):
    __slots__ = ("flow_id", "ingress", "packets_received", "bytes_received", "packets_expected", "packets_lost", "jitter_ms", "ssrc", "rtcp_received", "dropped_invalid", "dropped_from_viewers", "source_changes", "bitrate_bps", "legs", "reordered", "duplicates", "fraction_lost", "rtcp_errors", "rtcp_bye_dropped", "dropped_backlog", "node", "labels", "clock_rate", "packets_forwarded", "dropped_wrong_source", "dropped_wrong_ssrc", "srtp_errors", "srtp", "first_out", "last_out", "reports_out")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    PACKETS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_EXPECTED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_LOST_FIELD_NUMBER: _ClassVar[int]
    JITTER_MS_FIELD_NUMBER: _ClassVar[int]
    SSRC_FIELD_NUMBER: _ClassVar[int]
    RTCP_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_INVALID_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FROM_VIEWERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CHANGES_FIELD_NUMBER: _ClassVar[int]
    BITRATE_BPS_FIELD_NUMBER: _ClassVar[int]
    LEGS_FIELD_NUMBER: _ClassVar[int]
    REORDERED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    FRACTION_LOST_FIELD_NUMBER: _ClassVar[int]
    RTCP_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RTCP_BYE_DROPPED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BACKLOG_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_RATE_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FORWARDED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_WRONG_SOURCE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_WRONG_SSRC_FIELD_NUMBER: _ClassVar[int]
    SRTP_ERRORS_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    FIRST_OUT_FIELD_NUMBER: _ClassVar[int]
    LAST_OUT_FIELD_NUMBER: _ClassVar[int]
    REPORTS_OUT_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    ingress: Endpoint
    packets_received: int
    bytes_received: int
    packets_expected: int
    packets_lost: int
    jitter_ms: float
    ssrc: int
    rtcp_received: int
    dropped_invalid: int
    dropped_from_viewers: int
    source_changes: int
    bitrate_bps: float
    legs: _containers.RepeatedCompositeFieldContainer[LegStats]
    reordered: int
    duplicates: int
    fraction_lost: float
    rtcp_errors: int
    rtcp_bye_dropped: int
    dropped_backlog: int
    node: str
    labels: _containers.ScalarMap[str, str]
    clock_rate: int
    packets_forwarded: int
    dropped_wrong_source: int
    dropped_wrong_ssrc: int
    srtp_errors: int
    srtp: bool
    first_out: RtpPosition
    last_out: RtpPosition
    reports_out: bool
    def __init__(self, flow_id: _Optional[str] = ..., ingress: _Optional[_Union[Endpoint, _Mapping]] = ..., packets_received: _Optional[int] = ..., bytes_received: _Optional[int] = ..., packets_expected: _Optional[int] = ..., packets_lost: _Optional[int] = ..., jitter_ms: _Optional[float] = ..., ssrc: _Optional[int] = ..., rtcp_received: _Optional[int] = ..., dropped_invalid: _Optional[int] = ..., dropped_from_viewers: _Optional[int] = ..., source_changes: _Optional[int] = ..., bitrate_bps: _Optional[float] = ..., legs: _Optional[_Iterable[_Union[LegStats, _Mapping]]] = ..., reordered: _Optional[int] = ..., duplicates: _Optional[int] = ..., fraction_lost: _Optional[float] = ..., rtcp_errors: _Optional[int] = ..., rtcp_bye_dropped: _Optional[int] = ..., dropped_backlog: _Optional[int] = ..., node: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., clock_rate: _Optional[int] = ..., packets_forwarded: _Optional[int] = ..., dropped_wrong_source: _Optional[int] = ..., dropped_wrong_ssrc: _Optional[int] = ..., srtp_errors: _Optional[int] = ..., srtp: _Optional[bool] = ..., first_out: _Optional[_Union[RtpPosition, _Mapping]] = ..., last_out: _Optional[_Union[RtpPosition, _Mapping]] = ..., reports_out: _Optional[bool] = ...) -> None: ...

class RtpPosition(_message.Message):
    __slots__ = ("seq", "rtptime")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RTPTIME_FIELD_NUMBER: _ClassVar[int]
    seq: int
    rtptime: int
    def __init__(self, seq: _Optional[int] = ..., rtptime: _Optional[int] = ...) -> None: ...

class ListFlowsReply(_message.Message):
    __slots__ = ("flows", "node")
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[FlowStats]
    node: str
    def __init__(self, flows: _Optional[_Iterable[_Union[FlowStats, _Mapping]]] = ..., node: _Optional[str] = ...) -> None: ...
