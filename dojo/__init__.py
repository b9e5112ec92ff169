"""The typed config, storage and `.meta.json` sidecars that every layer uses; the admission gate, the queue and
the loop's steps over model/ and validation/; the `dojo` CLI on top of all (layers: docs/architecture.md).
Never imports prefect."""
