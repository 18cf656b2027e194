"""When work runs: cron expressions, the set scheduler, the retention runner, and the backup jobs
(one running backup per source)."""
