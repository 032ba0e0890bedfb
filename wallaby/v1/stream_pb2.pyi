import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamMessage(_message.Message):
    __slots__ = ("id", "stream", "namespace", "table", "lsn", "wire_format", "payload", "created_at", "registry_subject", "registry_id", "registry_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    WIRE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: int
    stream: str
    namespace: str
    table: str
    lsn: str
    wire_format: str
    payload: bytes
    created_at: _timestamp_pb2.Timestamp
    registry_subject: str
    registry_id: str
    registry_version: int
    def __init__(self, id: _Optional[int] = ..., stream: _Optional[str] = ..., namespace: _Optional[str] = ..., table: _Optional[str] = ..., lsn: _Optional[str] = ..., wire_format: _Optional[str] = ..., payload: _Optional[bytes] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., registry_subject: _Optional[str] = ..., registry_id: _Optional[str] = ..., registry_version: _Optional[int] = ...) -> None: ...

class StreamPullRequest(_message.Message):
    __slots__ = ("stream", "consumer_group", "max_messages", "visibility_timeout_seconds", "consumer_id")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_ID_FIELD_NUMBER: _ClassVar[int]
    stream: str
    consumer_group: str
    max_messages: int
    visibility_timeout_seconds: int
    consumer_id: str
    def __init__(self, stream: _Optional[str] = ..., consumer_group: _Optional[str] = ..., max_messages: _Optional[int] = ..., visibility_timeout_seconds: _Optional[int] = ..., consumer_id: _Optional[str] = ...) -> None: ...

class StreamPullResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[StreamMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[StreamMessage, _Mapping]]] = ...) -> None: ...

class StreamAckRequest(_message.Message):
    __slots__ = ("stream", "consumer_group", "ids")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    stream: str
    consumer_group: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, stream: _Optional[str] = ..., consumer_group: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class StreamAckResponse(_message.Message):
    __slots__ = ("acked",)
    ACKED_FIELD_NUMBER: _ClassVar[int]
    acked: int
    def __init__(self, acked: _Optional[int] = ...) -> None: ...

class StreamReplayRequest(_message.Message):
    __slots__ = ("stream", "consumer_group", "from_lsn", "since")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    FROM_LSN_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    stream: str
    consumer_group: str
    from_lsn: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, stream: _Optional[str] = ..., consumer_group: _Optional[str] = ..., from_lsn: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamReplayResponse(_message.Message):
    __slots__ = ("reset",)
    RESET_FIELD_NUMBER: _ClassVar[int]
    reset: int
    def __init__(self, reset: _Optional[int] = ...) -> None: ...
