"""Checks that stand between data and training: chat structure, masking validators, model directories.
Never imports prefect."""
