"""The process: configuration, start-up checks and main, instance locks, repository keys,
systemd notification, metrics, logs, operator health, service threads, durations."""
