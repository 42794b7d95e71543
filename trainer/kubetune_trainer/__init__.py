"""kubetune_trainer: the process that runs inside every FineTuneJob's Job (imports torch)."""
