"""Updates: signed manifests, download, verification, install with backup, self-update."""
