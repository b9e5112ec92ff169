"""Plumbing shared by all: the typed config, lineage sidecars, the `dojo` CLI. Never imports prefect."""
