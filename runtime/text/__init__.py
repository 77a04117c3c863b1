"""Text in and out of the model: chat messages and templates, detokenization, stop strings, reasoning and tool-call
parsing."""
