from wallaby.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetCheckpointRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("flow_id",)
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    def __init__(self, flow_id: _Optional[str] = ...) -> None: ...

class FlowCheckpoint(_message.Message):
    __slots__ = ("flow_id", "checkpoint")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    checkpoint: _types_pb2.Checkpoint
    def __init__(self, flow_id: _Optional[str] = ..., checkpoint: _Optional[_Union[_types_pb2.Checkpoint, _Mapping]] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[FlowCheckpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[FlowCheckpoint, _Mapping]]] = ...) -> None: ...

class ResetCheckpointRequest(_message.Message):
    __slots__ = ("flow_id", "destination")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    destination: str
    def __init__(self, flow_id: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class ResetCheckpointResponse(_message.Message):
    __slots__ = ("flow_id", "destination", "deleted_checkpoints", "pending_resets")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    DELETED_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_RESETS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    destination: str
    deleted_checkpoints: _containers.RepeatedCompositeFieldContainer[FlowCheckpoint]
    pending_resets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, flow_id: _Optional[str] = ..., destination: _Optional[str] = ..., deleted_checkpoints: _Optional[_Iterable[_Union[FlowCheckpoint, _Mapping]]] = ..., pending_resets: _Optional[_Iterable[str]] = ...) -> None: ...
