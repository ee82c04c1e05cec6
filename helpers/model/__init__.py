"""Layer 3, the model: GPT-2 assembled from the ops (`gpt2`), its memory layout (`layout`), the two
backends that run it (`backends`: NumPy references or the kernels), decoding with a key/value cache
(`generate`), checkpoints in Hugging Face's and llm.c's formats (`checkpoints`), the in-place NumPy
versions of the hot ops (`fast_numpy`) and Hugging Face's model as the oracle (`hf`).

Imports the runtime and the ops, nothing above them.
"""
