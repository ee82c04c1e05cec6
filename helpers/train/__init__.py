"""Layer 4, training: token data (`data`), the training loop (`loop`, also `python -m helpers.train`)
and live loss plots (`plots`). The loop's API is re-exported here: `from helpers import train;
train.train(train.TrainConfig(...))`."""
from .loop import (TrainConfig, TrainingError, evaluate, learning_rate, load_checkpoint, load_trained, main,
                   read_log, remove_stale_temporaries, sample_text, save_checkpoint, tensor_digest, train)

__all__ = ["TrainConfig", "TrainingError", "evaluate", "learning_rate", "load_checkpoint", "load_trained", "main",
           "read_log", "remove_stale_temporaries", "sample_text", "save_checkpoint", "tensor_digest", "train"]
