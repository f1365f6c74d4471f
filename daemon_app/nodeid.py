"""The node's identity: the id the Manager assigned, else `daemon.id`, else one generated once.

Read by the engine at start and written by the Manager link when the Manager assigns an id; its own
module so that neither imports the other for it.
"""

from __future__ import annotations

import os
import uuid

from daemon_app import fsutil
from daemon_app.errors import ConfigValidateError

MANAGER_NODE_ID_FILE = "node_id.manager"


def _read_node_id_file(path: str) -> str:
    """An id file's first line, "" when absent. Never through a planted symlink: whatever it points
    at would be sent to the Manager as our id."""
    try:
        with os.fdopen(fsutil.open_nofollow(path, os.O_RDONLY), "rb") as fh:
            return fh.read(256).decode("utf-8", errors="replace").strip()
    except FileNotFoundError:
        return ""
    except fsutil.UnsafePathError as exc:
        raise ConfigValidateError([f"daemon.work_dir: {exc}"]) from None


def load_or_create_node_id(work_dir: str, configured: str = "") -> str:
    """The id the Manager assigned (kept in <work_dir>/node_id.manager, seed §3.5.1), else
    `daemon.id` if set, else the id generated on first start and kept in <work_dir>/node_id."""
    assigned = _read_node_id_file(os.path.join(work_dir, MANAGER_NODE_ID_FILE))
    if assigned:
        return assigned
    if configured:
        return configured
    path = os.path.join(work_dir, "node_id")
    node_id = _read_node_id_file(path)
    if node_id:
        return node_id
    node_id = str(uuid.uuid4())
    fsutil.write_atomic(path, (node_id + "\n").encode(), 0o644)
    return node_id


def keep_manager_node_id(work_dir: str, node_id: str) -> None:
    """Persist the id the Manager assigned: it wins from the next start on (the daemon's own stays
    in <work_dir>/node_id, unused while this file exists)."""
    fsutil.write_atomic(os.path.join(work_dir, MANAGER_NODE_ID_FILE), (node_id + "\n").encode(), 0o644)
