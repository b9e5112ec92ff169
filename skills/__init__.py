"""Skills: generators, scorers and fixed eval sets. Never imports prefect or torch."""
