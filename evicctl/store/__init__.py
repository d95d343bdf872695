"""The store: SQLite schema and migrations (database), connections (connect), and a synthetic populated database for benchmarks and tests (synthetic)."""
