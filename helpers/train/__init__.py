"""Layer 4, training: token data (`data`), the training loop (`loop`, also `python -m helpers.train`),
data parallelism over MPI ranks (`parallel`, `launch`; notebook 14) and live loss plots (`plots`). The loop's API is re-exported here: `from helpers import train;
train.train(train.TrainConfig(...))`."""
from .loop import (MODELS, TrainConfig, TrainingError, build_model, evaluate, learning_rate, load_checkpoint,
                   load_trained, main, matching_intermediate_size, read_log, remove_stale_temporaries, sample_text,
                   save_checkpoint, tensor_digest, train)

__all__ = ["MODELS", "TrainConfig", "TrainingError", "build_model", "evaluate", "learning_rate", "load_checkpoint",
           "load_trained", "main", "matching_intermediate_size", "read_log", "remove_stale_temporaries", "sample_text",
           "save_checkpoint", "tensor_digest", "train"]
