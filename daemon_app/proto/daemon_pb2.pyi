from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "hostname", "ip", "os", "arch", "labels", "daemon_version", "agent_version", "register_at")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DAEMON_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REGISTER_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    ip: str
    os: str
    arch: str
    labels: _containers.ScalarMap[str, str]
    daemon_version: str
    agent_version: str
    register_at: str
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., daemon_version: _Optional[str] = ..., agent_version: _Optional[str] = ..., register_at: _Optional[str] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("pid", "state", "version", "start_time", "cpu_percent", "memory_bytes", "restart_count", "last_restart", "extra_json")
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_RESTART_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    pid: int
    state: str
    version: str
    start_time: str
    cpu_percent: float
    memory_bytes: int
    restart_count: int
    last_restart: str
    extra_json: str
    def __init__(self, pid: _Optional[int] = ..., state: _Optional[str] = ..., version: _Optional[str] = ..., start_time: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., restart_count: _Optional[int] = ..., last_restart: _Optional[str] = ..., extra_json: _Optional[str] = ...) -> None: ...

class MetricGroup(_message.Message):
    __slots__ = ("name", "timestamp", "values_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    VALUES_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    timestamp: str
    values_json: str
    def __init__(self, name: _Optional[str] = ..., timestamp: _Optional[str] = ..., values_json: _Optional[str] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("level", "message", "timestamp", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    level: str
    message: str
    timestamp: str
    fields: _containers.ScalarMap[str, str]
    def __init__(self, level: _Optional[str] = ..., message: _Optional[str] = ..., timestamp: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("node_id", "seq", "timestamp", "metrics", "agent_status", "logs", "outbox_dropped", "extra_json")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetricGroup
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetricGroup, _Mapping]] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    AGENT_STATUS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    seq: int
    timestamp: str
    metrics: _containers.MessageMap[str, MetricGroup]
    agent_status: AgentStatus
    logs: _containers.RepeatedCompositeFieldContainer[LogEntry]
    outbox_dropped: int
    extra_json: str
    def __init__(self, node_id: _Optional[str] = ..., seq: _Optional[int] = ..., timestamp: _Optional[str] = ..., metrics: _Optional[_Mapping[str, MetricGroup]] = ..., agent_status: _Optional[_Union[AgentStatus, _Mapping]] = ..., logs: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., outbox_dropped: _Optional[int] = ..., extra_json: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: NodeInfo
    def __init__(self, node: _Optional[_Union[NodeInfo, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("node_id", "acked_seq", "heartbeat_interval_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    acked_seq: int
    heartbeat_interval_ms: int
    def __init__(self, node_id: _Optional[str] = ..., acked_seq: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "timestamp", "agent_status", "outbox_depth", "outbox_dropped")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    AGENT_STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_DROPPED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    timestamp: str
    agent_status: AgentStatus
    outbox_depth: int
    outbox_dropped: int
    def __init__(self, node_id: _Optional[str] = ..., timestamp: _Optional[str] = ..., agent_status: _Optional[_Union[AgentStatus, _Mapping]] = ..., outbox_depth: _Optional[int] = ..., outbox_dropped: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("next_interval_ms",)
    NEXT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    next_interval_ms: int
    def __init__(self, next_interval_ms: _Optional[int] = ...) -> None: ...

class ReportBatch(_message.Message):
    __slots__ = ("node_id", "reports")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reports: _containers.RepeatedCompositeFieldContainer[Report]
    def __init__(self, node_id: _Optional[str] = ..., reports: _Optional[_Iterable[_Union[Report, _Mapping]]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("acked_seq", "stored", "duplicates", "rejected_seqs", "error")
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SEQS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    acked_seq: int
    stored: int
    duplicates: int
    rejected_seqs: _containers.RepeatedScalarFieldContainer[int]
    error: str
    def __init__(self, acked_seq: _Optional[int] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected_seqs: _Optional[_Iterable[int]] = ..., error: _Optional[str] = ...) -> None: ...

class CommandStreamRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("id", "update", "rollback", "agent")
    ID_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    update: UpdateCommand
    rollback: RollbackCommand
    agent: AgentCommand
    def __init__(self, id: _Optional[str] = ..., update: _Optional[_Union[UpdateCommand, _Mapping]] = ..., rollback: _Optional[_Union[RollbackCommand, _Mapping]] = ..., agent: _Optional[_Union[AgentCommand, _Mapping]] = ...) -> None: ...

class UpdateCommand(_message.Message):
    __slots__ = ("component", "url", "manifest", "manifest_sig")
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SIG_FIELD_NUMBER: _ClassVar[int]
    component: str
    url: str
    manifest: bytes
    manifest_sig: bytes
    def __init__(self, component: _Optional[str] = ..., url: _Optional[str] = ..., manifest: _Optional[bytes] = ..., manifest_sig: _Optional[bytes] = ...) -> None: ...

class RollbackCommand(_message.Message):
    __slots__ = ("component",)
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    component: str
    def __init__(self, component: _Optional[str] = ...) -> None: ...

class AgentCommand(_message.Message):
    __slots__ = ("action",)
    ACTION_FIELD_NUMBER: _ClassVar[int]
    action: str
    def __init__(self, action: _Optional[str] = ...) -> None: ...

class UpdateResult(_message.Message):
    __slots__ = ("success", "old_version", "new_version", "error", "rolled_back", "component")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    OLD_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    success: bool
    old_version: str
    new_version: str
    error: str
    rolled_back: bool
    component: str
    def __init__(self, success: _Optional[bool] = ..., old_version: _Optional[str] = ..., new_version: _Optional[str] = ..., error: _Optional[str] = ..., rolled_back: _Optional[bool] = ..., component: _Optional[str] = ...) -> None: ...

class CommandStatus(_message.Message):
    __slots__ = ("node_id", "command_id", "state", "percent", "message", "result")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    command_id: str
    state: str
    percent: float
    message: str
    result: UpdateResult
    def __init__(self, node_id: _Optional[str] = ..., command_id: _Optional[str] = ..., state: _Optional[str] = ..., percent: _Optional[float] = ..., message: _Optional[str] = ..., result: _Optional[_Union[UpdateResult, _Mapping]] = ...) -> None: ...

class CommandStatusAck(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...
