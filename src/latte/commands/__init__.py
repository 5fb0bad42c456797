"""Sub-commands of the `latte` CLI (see latte.cli)."""
