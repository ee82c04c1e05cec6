"""Layer 5, sampling for people: the notebook widget that streams a model's text (`widgets`).
The sampling itself (temperature, top-k, top-p, the key/value cache) is the model's
(`helpers.model.generate`)."""
