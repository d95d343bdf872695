"""The CLI's verbs and output: read (ls, show, tiers, history), mutate (pin, evict, ...), output (table/json/jsonl/csv) and common (errors, exit codes). cli.py wires them into Typer."""
