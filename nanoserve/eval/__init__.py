"""`nanoserve eval`: quality measures of a model as the engine runs it (perplexity on real text)."""
