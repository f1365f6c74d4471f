"""Updates: signed manifests, download, verification, install with backup, self-update.

flow.py (Updater, run_update, UpdateRequest, UpdateResult) is the procedure; manifest.py the signed
statement and its keys; versions.py the comparator; download.py the bounded HTTPS fetch; install.py
backups and the atomic swap; state.py the floor and the crash journal; targets.py the Agent;
selfupdate.py the daemon itself; errors.py one exception per failure mode. See docs/updates.md.
"""
