"""Everything torch: loading, chat rendering, packing, the training loop, checkpoints + ledger, evaluation.
Never imports prefect."""
