"""The reference Manager: a mutual-TLS gRPC server, a SQLite store and the `daemon-manager` CLI."""
