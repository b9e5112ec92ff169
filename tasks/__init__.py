"""Prefect tasks: thin adapters (retries, artifacts, logging) over the plain modules. Built in the pipeline
issue."""
