import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from wallaby.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackfillState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKFILL_STATE_UNSPECIFIED: _ClassVar[BackfillState]
    BACKFILL_STATE_NEVER_RAN: _ClassVar[BackfillState]
    BACKFILL_STATE_RUNNING: _ClassVar[BackfillState]
    BACKFILL_STATE_UNFINISHED: _ClassVar[BackfillState]
    BACKFILL_STATE_FINISHED: _ClassVar[BackfillState]
    BACKFILL_STATE_UNKNOWN: _ClassVar[BackfillState]
BACKFILL_STATE_UNSPECIFIED: BackfillState
BACKFILL_STATE_NEVER_RAN: BackfillState
BACKFILL_STATE_RUNNING: BackfillState
BACKFILL_STATE_UNFINISHED: BackfillState
BACKFILL_STATE_FINISHED: BackfillState
BACKFILL_STATE_UNKNOWN: BackfillState

class CreateFlowRequest(_message.Message):
    __slots__ = ("flow", "start_immediately")
    FLOW_FIELD_NUMBER: _ClassVar[int]
    START_IMMEDIATELY_FIELD_NUMBER: _ClassVar[int]
    flow: _types_pb2.Flow
    start_immediately: bool
    def __init__(self, flow: _Optional[_Union[_types_pb2.Flow, _Mapping]] = ..., start_immediately: _Optional[bool] = ...) -> None: ...

class UpdateFlowRequest(_message.Message):
    __slots__ = ("flow",)
    FLOW_FIELD_NUMBER: _ClassVar[int]
    flow: _types_pb2.Flow
    def __init__(self, flow: _Optional[_Union[_types_pb2.Flow, _Mapping]] = ...) -> None: ...

class ReconfigureFlowRequest(_message.Message):
    __slots__ = ("flow", "pause_first", "resume_after", "sync_publication")
    FLOW_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIRST_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    SYNC_PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    flow: _types_pb2.Flow
    pause_first: bool
    resume_after: bool
    sync_publication: bool
    def __init__(self, flow: _Optional[_Union[_types_pb2.Flow, _Mapping]] = ..., pause_first: _Optional[bool] = ..., resume_after: _Optional[bool] = ..., sync_publication: _Optional[bool] = ...) -> None: ...

class StartFlowRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class RunFlowOnceRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class RunFlowOnceResponse(_message.Message):
    __slots__ = ("dispatched",)
    DISPATCHED_FIELD_NUMBER: _ClassVar[int]
    dispatched: bool
    def __init__(self, dispatched: _Optional[bool] = ...) -> None: ...

class StopFlowRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class PauseFlowRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class ResumeFlowRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class GetFlowRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class ListFlowsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFlowsResponse(_message.Message):
    __slots__ = ("flows", "next_page_token")
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[_types_pb2.Flow]
    next_page_token: str
    def __init__(self, flows: _Optional[_Iterable[_Union[_types_pb2.Flow, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteFlowRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class DeleteFlowResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class CleanupFlowRequest(_message.Message):
    __slots__ = ("flow_id", "drop_slot", "drop_publication", "drop_source_state")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DROP_SLOT_FIELD_NUMBER: _ClassVar[int]
    DROP_PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    DROP_SOURCE_STATE_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    drop_slot: bool
    drop_publication: bool
    drop_source_state: bool
    def __init__(self, flow_id: _Optional[str] = ..., drop_slot: _Optional[bool] = ..., drop_publication: _Optional[bool] = ..., drop_source_state: _Optional[bool] = ...) -> None: ...

class CleanupFlowResponse(_message.Message):
    __slots__ = ("cleaned",)
    CLEANED_FIELD_NUMBER: _ClassVar[int]
    cleaned: bool
    def __init__(self, cleaned: _Optional[bool] = ...) -> None: ...

class ListReplicationSlotsRequest(_message.Message):
    __slots__ = ("flow_id", "dsn", "slot", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DSN_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    dsn: str
    slot: str
    options: _containers.ScalarMap[str, str]
    def __init__(self, flow_id: _Optional[str] = ..., dsn: _Optional[str] = ..., slot: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReplicationSlotInfo(_message.Message):
    __slots__ = ("slot_name", "plugin", "slot_type", "database", "active", "active_pid", "temporary", "wal_status", "restart_lsn", "confirmed_flush_lsn", "active_pid_present")
    SLOT_NAME_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    SLOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_PID_FIELD_NUMBER: _ClassVar[int]
    TEMPORARY_FIELD_NUMBER: _ClassVar[int]
    WAL_STATUS_FIELD_NUMBER: _ClassVar[int]
    RESTART_LSN_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FLUSH_LSN_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_PID_PRESENT_FIELD_NUMBER: _ClassVar[int]
    slot_name: str
    plugin: str
    slot_type: str
    database: str
    active: bool
    active_pid: int
    temporary: bool
    wal_status: str
    restart_lsn: str
    confirmed_flush_lsn: str
    active_pid_present: bool
    def __init__(self, slot_name: _Optional[str] = ..., plugin: _Optional[str] = ..., slot_type: _Optional[str] = ..., database: _Optional[str] = ..., active: _Optional[bool] = ..., active_pid: _Optional[int] = ..., temporary: _Optional[bool] = ..., wal_status: _Optional[str] = ..., restart_lsn: _Optional[str] = ..., confirmed_flush_lsn: _Optional[str] = ..., active_pid_present: _Optional[bool] = ...) -> None: ...

class ListReplicationSlotsResponse(_message.Message):
    __slots__ = ("slots", "flow_id")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    slots: _containers.RepeatedCompositeFieldContainer[ReplicationSlotInfo]
    flow_id: str
    def __init__(self, slots: _Optional[_Iterable[_Union[ReplicationSlotInfo, _Mapping]]] = ..., flow_id: _Optional[str] = ...) -> None: ...

class GetReplicationSlotRequest(_message.Message):
    __slots__ = ("flow_id", "dsn", "slot", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DSN_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    dsn: str
    slot: str
    options: _containers.ScalarMap[str, str]
    def __init__(self, flow_id: _Optional[str] = ..., dsn: _Optional[str] = ..., slot: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetReplicationSlotResponse(_message.Message):
    __slots__ = ("slot",)
    SLOT_FIELD_NUMBER: _ClassVar[int]
    slot: ReplicationSlotInfo
    def __init__(self, slot: _Optional[_Union[ReplicationSlotInfo, _Mapping]] = ...) -> None: ...

class DropReplicationSlotRequest(_message.Message):
    __slots__ = ("flow_id", "dsn", "slot", "if_exists", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DSN_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    IF_EXISTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    dsn: str
    slot: str
    if_exists: bool
    options: _containers.ScalarMap[str, str]
    def __init__(self, flow_id: _Optional[str] = ..., dsn: _Optional[str] = ..., slot: _Optional[str] = ..., if_exists: _Optional[bool] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DropReplicationSlotResponse(_message.Message):
    __slots__ = ("slot", "found", "dropped", "flow_id")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    slot: str
    found: bool
    dropped: bool
    flow_id: str
    def __init__(self, slot: _Optional[str] = ..., found: _Optional[bool] = ..., dropped: _Optional[bool] = ..., flow_id: _Optional[str] = ...) -> None: ...

class ListPublicationTablesRequest(_message.Message):
    __slots__ = ("flow_id", "dsn", "publication", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DSN_FIELD_NUMBER: _ClassVar[int]
    PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    dsn: str
    publication: str
    options: _containers.ScalarMap[str, str]
    def __init__(self, flow_id: _Optional[str] = ..., dsn: _Optional[str] = ..., publication: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListPublicationTablesResponse(_message.Message):
    __slots__ = ("tables", "publication", "flow_id")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedScalarFieldContainer[str]
    publication: str
    flow_id: str
    def __init__(self, tables: _Optional[_Iterable[str]] = ..., publication: _Optional[str] = ..., flow_id: _Optional[str] = ...) -> None: ...

class AddPublicationTablesRequest(_message.Message):
    __slots__ = ("flow_id", "dsn", "publication", "tables", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DSN_FIELD_NUMBER: _ClassVar[int]
    PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    dsn: str
    publication: str
    tables: _containers.RepeatedScalarFieldContainer[str]
    options: _containers.ScalarMap[str, str]
    def __init__(self, flow_id: _Optional[str] = ..., dsn: _Optional[str] = ..., publication: _Optional[str] = ..., tables: _Optional[_Iterable[str]] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DropPublicationTablesRequest(_message.Message):
    __slots__ = ("flow_id", "dsn", "publication", "tables", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DSN_FIELD_NUMBER: _ClassVar[int]
    PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    dsn: str
    publication: str
    tables: _containers.RepeatedScalarFieldContainer[str]
    options: _containers.ScalarMap[str, str]
    def __init__(self, flow_id: _Optional[str] = ..., dsn: _Optional[str] = ..., publication: _Optional[str] = ..., tables: _Optional[_Iterable[str]] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PublicationTablesMutationResponse(_message.Message):
    __slots__ = ("tables", "publication")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedScalarFieldContainer[str]
    publication: str
    def __init__(self, tables: _Optional[_Iterable[str]] = ..., publication: _Optional[str] = ...) -> None: ...

class SyncPublicationTablesRequest(_message.Message):
    __slots__ = ("flow_id", "dsn", "publication", "tables", "mode", "options", "schemas", "pause", "resume", "snapshot")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DSN_FIELD_NUMBER: _ClassVar[int]
    PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SCHEMAS_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    dsn: str
    publication: str
    tables: _containers.RepeatedScalarFieldContainer[str]
    mode: str
    options: _containers.ScalarMap[str, str]
    schemas: _containers.RepeatedScalarFieldContainer[str]
    pause: bool
    resume: bool
    snapshot: bool
    def __init__(self, flow_id: _Optional[str] = ..., dsn: _Optional[str] = ..., publication: _Optional[str] = ..., tables: _Optional[_Iterable[str]] = ..., mode: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., schemas: _Optional[_Iterable[str]] = ..., pause: _Optional[bool] = ..., resume: _Optional[bool] = ..., snapshot: _Optional[bool] = ...) -> None: ...

class SyncPublicationTablesResponse(_message.Message):
    __slots__ = ("added", "removed", "publication", "flow_id", "snapshot_tables")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_TABLES_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    publication: str
    flow_id: str
    snapshot_tables: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., publication: _Optional[str] = ..., flow_id: _Optional[str] = ..., snapshot_tables: _Optional[_Iterable[str]] = ...) -> None: ...

class ScrapePublicationTablesRequest(_message.Message):
    __slots__ = ("flow_id", "dsn", "publication", "schemas", "apply", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DSN_FIELD_NUMBER: _ClassVar[int]
    PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    SCHEMAS_FIELD_NUMBER: _ClassVar[int]
    APPLY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    dsn: str
    publication: str
    schemas: _containers.RepeatedScalarFieldContainer[str]
    apply: bool
    options: _containers.ScalarMap[str, str]
    def __init__(self, flow_id: _Optional[str] = ..., dsn: _Optional[str] = ..., publication: _Optional[str] = ..., schemas: _Optional[_Iterable[str]] = ..., apply: _Optional[bool] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ScrapePublicationTablesResponse(_message.Message):
    __slots__ = ("discovered_tables", "missing_tables", "applied", "flow_id")
    DISCOVERED_TABLES_FIELD_NUMBER: _ClassVar[int]
    MISSING_TABLES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    discovered_tables: _containers.RepeatedScalarFieldContainer[str]
    missing_tables: _containers.RepeatedScalarFieldContainer[str]
    applied: bool
    flow_id: str
    def __init__(self, discovered_tables: _Optional[_Iterable[str]] = ..., missing_tables: _Optional[_Iterable[str]] = ..., applied: _Optional[bool] = ..., flow_id: _Optional[str] = ...) -> None: ...

class ResolveStagingRequest(_message.Message):
    __slots__ = ("flow_id", "tables", "schemas", "destination")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    SCHEMAS_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    tables: _containers.RepeatedScalarFieldContainer[str]
    schemas: _containers.RepeatedScalarFieldContainer[str]
    destination: str
    def __init__(self, flow_id: _Optional[str] = ..., tables: _Optional[_Iterable[str]] = ..., schemas: _Optional[_Iterable[str]] = ..., destination: _Optional[str] = ...) -> None: ...

class ResolvedStagingTable(_message.Message):
    __slots__ = ("destination", "table", "rows", "resolution", "staging_table", "staged")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    STAGING_TABLE_FIELD_NUMBER: _ClassVar[int]
    STAGED_FIELD_NUMBER: _ClassVar[int]
    destination: str
    table: str
    rows: int
    resolution: str
    staging_table: str
    staged: bool
    def __init__(self, destination: _Optional[str] = ..., table: _Optional[str] = ..., rows: _Optional[int] = ..., resolution: _Optional[str] = ..., staging_table: _Optional[str] = ..., staged: _Optional[bool] = ...) -> None: ...

class ResolveStagingResponse(_message.Message):
    __slots__ = ("flow_id", "tables")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    tables: _containers.RepeatedCompositeFieldContainer[ResolvedStagingTable]
    def __init__(self, flow_id: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[ResolvedStagingTable, _Mapping]]] = ...) -> None: ...

class GetBackfillStatusRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class BackfillDestinationProgress(_message.Message):
    __slots__ = ("destination", "rows", "parts_done")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PARTS_DONE_FIELD_NUMBER: _ClassVar[int]
    destination: str
    rows: int
    parts_done: int
    def __init__(self, destination: _Optional[str] = ..., rows: _Optional[int] = ..., parts_done: _Optional[int] = ...) -> None: ...

class BackfillPart(_message.Message):
    __slots__ = ("part", "first_block", "end_block", "next_block", "rows", "done", "next_key")
    PART_FIELD_NUMBER: _ClassVar[int]
    FIRST_BLOCK_FIELD_NUMBER: _ClassVar[int]
    END_BLOCK_FIELD_NUMBER: _ClassVar[int]
    NEXT_BLOCK_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    NEXT_KEY_FIELD_NUMBER: _ClassVar[int]
    part: str
    first_block: int
    end_block: int
    next_block: int
    rows: int
    done: bool
    next_key: str
    def __init__(self, part: _Optional[str] = ..., first_block: _Optional[int] = ..., end_block: _Optional[int] = ..., next_block: _Optional[int] = ..., rows: _Optional[int] = ..., done: _Optional[bool] = ..., next_key: _Optional[str] = ...) -> None: ...

class BackfillTableStatus(_message.Message):
    __slots__ = ("table", "state", "parts_total", "parts_done", "rows", "destinations", "destinations_differ", "started_at", "updated_at", "parts")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PARTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PARTS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_DIFFER_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    table: str
    state: BackfillState
    parts_total: int
    parts_done: int
    rows: int
    destinations: _containers.RepeatedCompositeFieldContainer[BackfillDestinationProgress]
    destinations_differ: bool
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    parts: _containers.RepeatedCompositeFieldContainer[BackfillPart]
    def __init__(self, table: _Optional[str] = ..., state: _Optional[_Union[BackfillState, str]] = ..., parts_total: _Optional[int] = ..., parts_done: _Optional[int] = ..., rows: _Optional[int] = ..., destinations: _Optional[_Iterable[_Union[BackfillDestinationProgress, _Mapping]]] = ..., destinations_differ: _Optional[bool] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parts: _Optional[_Iterable[_Union[BackfillPart, _Mapping]]] = ...) -> None: ...

class GetBackfillStatusResponse(_message.Message):
    __slots__ = ("flow_id", "state", "backend", "location", "tables", "started_at", "updated_at", "finished_at", "running_detail", "note")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_DETAIL_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    state: BackfillState
    backend: str
    location: str
    tables: _containers.RepeatedCompositeFieldContainer[BackfillTableStatus]
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    running_detail: str
    note: str
    def __init__(self, flow_id: _Optional[str] = ..., state: _Optional[_Union[BackfillState, str]] = ..., backend: _Optional[str] = ..., location: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[BackfillTableStatus, _Mapping]]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., running_detail: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...
