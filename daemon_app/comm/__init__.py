"""The Manager link: gRPC client over mutual TLS, and the durable outbox."""
