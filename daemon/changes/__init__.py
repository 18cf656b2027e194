"""Change tracking: what changed in each source since a set, and whether to trust it
(the inotify watcher, the durable journal, the backstop scan, the RPO keeper, skip-if-unchanged)."""
