import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DDLEvent(_message.Message):
    __slots__ = ("id", "ddl", "lsn", "status", "plan_json", "created_at", "flow_id", "table", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    DDL_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    ddl: str
    lsn: str
    status: str
    plan_json: str
    created_at: _timestamp_pb2.Timestamp
    flow_id: str
    table: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., ddl: _Optional[str] = ..., lsn: _Optional[str] = ..., status: _Optional[str] = ..., plan_json: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., flow_id: _Optional[str] = ..., table: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListPendingDDLRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class ListPendingDDLResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[DDLEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[DDLEvent, _Mapping]]] = ...) -> None: ...

class ListDDLRequest(_message.Message):
    __slots__ = ("status", "flow_id")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    status: str
    flow_id: str
    def __init__(self, status: _Optional[str] = ..., flow_id: _Optional[str] = ...) -> None: ...

class ListDDLResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[DDLEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[DDLEvent, _Mapping]]] = ...) -> None: ...

class ApproveDDLRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class ApproveDDLResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: DDLEvent
    def __init__(self, event: _Optional[_Union[DDLEvent, _Mapping]] = ...) -> None: ...

class RejectDDLRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class RejectDDLResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: DDLEvent
    def __init__(self, event: _Optional[_Union[DDLEvent, _Mapping]] = ...) -> None: ...

class MarkDDLAppliedRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class MarkDDLAppliedResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: DDLEvent
    def __init__(self, event: _Optional[_Union[DDLEvent, _Mapping]] = ...) -> None: ...
