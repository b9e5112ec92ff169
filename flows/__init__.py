"""Prefect flows: wiring only (which task, in what order, on which pool). Built in the pipeline issue on top
of the plain modules in model/, validation/, skills/ and dojo/."""
