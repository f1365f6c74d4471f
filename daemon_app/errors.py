"""DaemonError and the D-codes of the seed's §7.1: every error the operator sees carries one."""

from __future__ import annotations


class DaemonError(Exception):
    """An error with a D-code; str() is 'Dxxxx <message>' so logs and CLI output always carry it."""

    code = "D0000"
    name = "DaemonError"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        self.message = message
        super().__init__(f"{self.code} {message}")


class ConfigLoadError(DaemonError):
    code, name = "D1001", "ConfigLoadError"


class ConfigValidateError(DaemonError):
    """Carries every problem found, so the operator fixes the file in one pass."""

    code, name = "D1002", "ConfigValidateError"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"{self.code} config: {p}" for p in self.problems)
        super().__init__(f"config: {len(self.problems)} problem(s)\n{lines}")


class AlreadyRunningError(DaemonError):
    """Another daemon holds the work_dir or pid file lock: an operator error, not a config error."""

    code, name = "D1003", "AlreadyRunningError"


class ControlError(DaemonError):
    """The control socket cannot be reached (daemon not running, no permission) or refused a request."""

    code, name = "D1004", "ControlError"


class ManagerConnectError(DaemonError):
    code, name = "D2001", "ManagerConnectError"


class ManagerRegisterError(DaemonError):
    code, name = "D2002", "ManagerRegisterError"


class ManagerReportError(DaemonError):
    code, name = "D2003", "ManagerReportError"


class AgentStartError(DaemonError):
    code, name = "D3001", "AgentStartError"


class AgentStopError(DaemonError):
    code, name = "D3002", "AgentStopError"


class AgentHealthError(DaemonError):
    code, name = "D3003", "AgentHealthError"


class UpdateDownloadError(DaemonError):
    code, name = "D4001", "UpdateDownloadError"


class UpdateVerifyError(DaemonError):
    code, name = "D4002", "UpdateVerifyError"


class UpdateApplyError(DaemonError):
    code, name = "D4003", "UpdateApplyError"


class UpdateRollbackError(DaemonError):
    code, name = "D4004", "UpdateRollbackError"


class CollectError(DaemonError):
    code, name = "D5001", "CollectError"


class RemoteConfigError(DaemonError):
    """A remote Agent config push refused, rejected by agent.config_check, or not applied."""

    code, name = "D6001", "RemoteConfigError"


ALL_ERRORS: tuple[type[DaemonError], ...] = (
    ConfigLoadError,
    ConfigValidateError,
    AlreadyRunningError,
    ControlError,
    ManagerConnectError,
    ManagerRegisterError,
    ManagerReportError,
    AgentStartError,
    AgentStopError,
    AgentHealthError,
    UpdateDownloadError,
    UpdateVerifyError,
    UpdateApplyError,
    UpdateRollbackError,
    CollectError,
    RemoteConfigError,
)
