"""Agent supervision: process lifecycle, heartbeat socket, health checks, events."""
