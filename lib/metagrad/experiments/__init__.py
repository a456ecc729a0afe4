"""The paper's experiments as functions and CLI subcommands (plots, JSON results and a table)."""
