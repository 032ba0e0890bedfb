from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValueList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("months", "days", "nanoseconds")
    MONTHS_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    NANOSECONDS_FIELD_NUMBER: _ClassVar[int]
    months: int
    days: int
    nanoseconds: int
    def __init__(self, months: _Optional[int] = ..., days: _Optional[int] = ..., nanoseconds: _Optional[int] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("null_value", "bool_value", "int_value", "uint_value", "double_value", "string_value", "bytes_value", "decimal_value", "timestamp_micros", "date_days", "time_micros", "interval_value", "list_value")
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    UINT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    DECIMAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MICROS_FIELD_NUMBER: _ClassVar[int]
    DATE_DAYS_FIELD_NUMBER: _ClassVar[int]
    TIME_MICROS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    null_value: bool
    bool_value: bool
    int_value: int
    uint_value: int
    double_value: float
    string_value: str
    bytes_value: bytes
    decimal_value: str
    timestamp_micros: int
    date_days: int
    time_micros: int
    interval_value: Interval
    list_value: ValueList
    def __init__(self, null_value: _Optional[bool] = ..., bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., uint_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bytes_value: _Optional[bytes] = ..., decimal_value: _Optional[str] = ..., timestamp_micros: _Optional[int] = ..., date_days: _Optional[int] = ..., time_micros: _Optional[int] = ..., interval_value: _Optional[_Union[Interval, _Mapping]] = ..., list_value: _Optional[_Union[ValueList, _Mapping]] = ...) -> None: ...

class ColumnInfo(_message.Message):
    __slots__ = ("name", "pg_type", "arrow_type", "key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PG_TYPE_FIELD_NUMBER: _ClassVar[int]
    ARROW_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    pg_type: str
    arrow_type: str
    key: bool
    def __init__(self, name: _Optional[str] = ..., pg_type: _Optional[str] = ..., arrow_type: _Optional[str] = ..., key: _Optional[bool] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("op", "lsn", "ordinal", "commit_ts_micros", "xid", "key", "has_before", "before", "has_after", "after", "unchanged")
    OP_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    ORDINAL_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TS_MICROS_FIELD_NUMBER: _ClassVar[int]
    XID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    HAS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    HAS_AFTER_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    op: str
    lsn: int
    ordinal: int
    commit_ts_micros: int
    xid: int
    key: _containers.RepeatedCompositeFieldContainer[Value]
    has_before: bool
    before: _containers.RepeatedCompositeFieldContainer[Value]
    has_after: bool
    after: _containers.RepeatedCompositeFieldContainer[Value]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, op: _Optional[str] = ..., lsn: _Optional[int] = ..., ordinal: _Optional[int] = ..., commit_ts_micros: _Optional[int] = ..., xid: _Optional[int] = ..., key: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., has_before: _Optional[bool] = ..., before: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., has_after: _Optional[bool] = ..., after: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., unchanged: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordBatch(_message.Message):
    __slots__ = ("flow_id", "table", "schema_version", "replica_identity", "columns", "records", "tables", "event_json", "has_before")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICA_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    HAS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    table: str
    schema_version: int
    replica_identity: str
    columns: _containers.RepeatedCompositeFieldContainer[ColumnInfo]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    tables: _containers.RepeatedScalarFieldContainer[str]
    event_json: str
    has_before: bool
    def __init__(self, flow_id: _Optional[str] = ..., table: _Optional[str] = ..., schema_version: _Optional[int] = ..., replica_identity: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[ColumnInfo, _Mapping]]] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., tables: _Optional[_Iterable[str]] = ..., event_json: _Optional[str] = ..., has_before: _Optional[bool] = ...) -> None: ...
