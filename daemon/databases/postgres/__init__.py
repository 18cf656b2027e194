"""PostgreSQL's own knowledge: the psycopg2 adapter, recovery preparation, restore-db of a
base backup, WAL archive health and `cairn check-db`."""
