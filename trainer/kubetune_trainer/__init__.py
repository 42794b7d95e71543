"""kubetune_trainer: the process that runs inside every FineTuneJob's Job (imports torch)."""

from kubetune_trainer.library_noise import silence_known_library_noise

silence_known_library_noise()  # before any submodule imports peft (and with it bitsandbytes)
