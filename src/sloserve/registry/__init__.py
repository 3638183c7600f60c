"""registry: the model repository on disk and the registry database (SQLite)."""
