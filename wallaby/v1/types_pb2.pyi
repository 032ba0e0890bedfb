import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FlowState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOW_STATE_UNSPECIFIED: _ClassVar[FlowState]
    FLOW_STATE_CREATED: _ClassVar[FlowState]
    FLOW_STATE_RUNNING: _ClassVar[FlowState]
    FLOW_STATE_PAUSED: _ClassVar[FlowState]
    FLOW_STATE_STOPPING: _ClassVar[FlowState]
    FLOW_STATE_FAILED: _ClassVar[FlowState]
    FLOW_STATE_STOPPED: _ClassVar[FlowState]

class EndpointType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_TYPE_UNSPECIFIED: _ClassVar[EndpointType]
    ENDPOINT_TYPE_POSTGRES: _ClassVar[EndpointType]
    ENDPOINT_TYPE_SNOWFLAKE: _ClassVar[EndpointType]
    ENDPOINT_TYPE_S3: _ClassVar[EndpointType]
    ENDPOINT_TYPE_KAFKA: _ClassVar[EndpointType]
    ENDPOINT_TYPE_HTTP: _ClassVar[EndpointType]
    ENDPOINT_TYPE_GRPC: _ClassVar[EndpointType]
    ENDPOINT_TYPE_PROTO: _ClassVar[EndpointType]
    ENDPOINT_TYPE_PGSTREAM: _ClassVar[EndpointType]
    ENDPOINT_TYPE_SNOWPIPE: _ClassVar[EndpointType]
    ENDPOINT_TYPE_PARQUET: _ClassVar[EndpointType]
    ENDPOINT_TYPE_DUCKDB: _ClassVar[EndpointType]
    ENDPOINT_TYPE_CLICKHOUSE: _ClassVar[EndpointType]
    ENDPOINT_TYPE_DUCKLAKE: _ClassVar[EndpointType]
    ENDPOINT_TYPE_BUFSTREAM: _ClassVar[EndpointType]

class WireFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WIRE_FORMAT_UNSPECIFIED: _ClassVar[WireFormat]
    WIRE_FORMAT_ARROW: _ClassVar[WireFormat]
    WIRE_FORMAT_PARQUET: _ClassVar[WireFormat]
    WIRE_FORMAT_PROTO: _ClassVar[WireFormat]
    WIRE_FORMAT_AVRO: _ClassVar[WireFormat]
    WIRE_FORMAT_JSON: _ClassVar[WireFormat]

class AckPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_POLICY_UNSPECIFIED: _ClassVar[AckPolicy]
    ACK_POLICY_ALL: _ClassVar[AckPolicy]
    ACK_POLICY_PRIMARY: _ClassVar[AckPolicy]

class FailureMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_MODE_UNSPECIFIED: _ClassVar[FailureMode]
    FAILURE_MODE_HOLD_SLOT: _ClassVar[FailureMode]
    FAILURE_MODE_DROP_SLOT: _ClassVar[FailureMode]

class GiveUpPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GIVE_UP_POLICY_UNSPECIFIED: _ClassVar[GiveUpPolicy]
    GIVE_UP_POLICY_NEVER: _ClassVar[GiveUpPolicy]
    GIVE_UP_POLICY_ON_RETRY_EXHAUSTION: _ClassVar[GiveUpPolicy]
FLOW_STATE_UNSPECIFIED: FlowState
FLOW_STATE_CREATED: FlowState
FLOW_STATE_RUNNING: FlowState
FLOW_STATE_PAUSED: FlowState
FLOW_STATE_STOPPING: FlowState
FLOW_STATE_FAILED: FlowState
FLOW_STATE_STOPPED: FlowState
ENDPOINT_TYPE_UNSPECIFIED: EndpointType
ENDPOINT_TYPE_POSTGRES: EndpointType
ENDPOINT_TYPE_SNOWFLAKE: EndpointType
ENDPOINT_TYPE_S3: EndpointType
ENDPOINT_TYPE_KAFKA: EndpointType
ENDPOINT_TYPE_HTTP: EndpointType
ENDPOINT_TYPE_GRPC: EndpointType
ENDPOINT_TYPE_PROTO: EndpointType
ENDPOINT_TYPE_PGSTREAM: EndpointType
ENDPOINT_TYPE_SNOWPIPE: EndpointType
ENDPOINT_TYPE_PARQUET: EndpointType
ENDPOINT_TYPE_DUCKDB: EndpointType
ENDPOINT_TYPE_CLICKHOUSE: EndpointType
ENDPOINT_TYPE_DUCKLAKE: EndpointType
ENDPOINT_TYPE_BUFSTREAM: EndpointType
WIRE_FORMAT_UNSPECIFIED: WireFormat
WIRE_FORMAT_ARROW: WireFormat
WIRE_FORMAT_PARQUET: WireFormat
WIRE_FORMAT_PROTO: WireFormat
WIRE_FORMAT_AVRO: WireFormat
WIRE_FORMAT_JSON: WireFormat
ACK_POLICY_UNSPECIFIED: AckPolicy
ACK_POLICY_ALL: AckPolicy
ACK_POLICY_PRIMARY: AckPolicy
FAILURE_MODE_UNSPECIFIED: FailureMode
FAILURE_MODE_HOLD_SLOT: FailureMode
FAILURE_MODE_DROP_SLOT: FailureMode
GIVE_UP_POLICY_UNSPECIFIED: GiveUpPolicy
GIVE_UP_POLICY_NEVER: GiveUpPolicy
GIVE_UP_POLICY_ON_RETRY_EXHAUSTION: GiveUpPolicy

class Endpoint(_message.Message):
    __slots__ = ("name", "type", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: EndpointType
    options: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[EndpointType, str]] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DDLPolicy(_message.Message):
    __slots__ = ("gate", "auto_approve", "auto_apply")
    GATE_FIELD_NUMBER: _ClassVar[int]
    AUTO_APPROVE_FIELD_NUMBER: _ClassVar[int]
    AUTO_APPLY_FIELD_NUMBER: _ClassVar[int]
    gate: bool
    auto_approve: bool
    auto_apply: bool
    def __init__(self, gate: _Optional[bool] = ..., auto_approve: _Optional[bool] = ..., auto_apply: _Optional[bool] = ...) -> None: ...

class FlowConfig(_message.Message):
    __slots__ = ("ack_policy", "primary_destination", "failure_mode", "give_up_policy", "ddl")
    ACK_POLICY_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_DESTINATION_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MODE_FIELD_NUMBER: _ClassVar[int]
    GIVE_UP_POLICY_FIELD_NUMBER: _ClassVar[int]
    DDL_FIELD_NUMBER: _ClassVar[int]
    ack_policy: AckPolicy
    primary_destination: str
    failure_mode: FailureMode
    give_up_policy: GiveUpPolicy
    ddl: DDLPolicy
    def __init__(self, ack_policy: _Optional[_Union[AckPolicy, str]] = ..., primary_destination: _Optional[str] = ..., failure_mode: _Optional[_Union[FailureMode, str]] = ..., give_up_policy: _Optional[_Union[GiveUpPolicy, str]] = ..., ddl: _Optional[_Union[DDLPolicy, _Mapping]] = ...) -> None: ...

class Flow(_message.Message):
    __slots__ = ("id", "name", "source", "destinations", "state", "wire_format", "parallelism", "config", "generation", "state_reason", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WIRE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    source: Endpoint
    destinations: _containers.RepeatedCompositeFieldContainer[Endpoint]
    state: FlowState
    wire_format: WireFormat
    parallelism: int
    config: FlowConfig
    generation: int
    state_reason: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., source: _Optional[_Union[Endpoint, _Mapping]] = ..., destinations: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., state: _Optional[_Union[FlowState, str]] = ..., wire_format: _Optional[_Union[WireFormat, str]] = ..., parallelism: _Optional[int] = ..., config: _Optional[_Union[FlowConfig, _Mapping]] = ..., generation: _Optional[int] = ..., state_reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("lsn", "timestamp_unix_millis", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LSN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MILLIS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    lsn: str
    timestamp_unix_millis: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, lsn: _Optional[str] = ..., timestamp_unix_millis: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...
