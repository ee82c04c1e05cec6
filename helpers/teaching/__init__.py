"""Layer 6, the notebooks' aids: checks against a reference (`checking`), finite differences
(`gradcheck`), benchmark tables (`bench`), GPU sizing (`gpu_sizes`) and the helpers every notebook
shares (`notebook`: printing a kernel, expecting an error, loading an exercise)."""
