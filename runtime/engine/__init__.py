"""The serving loop: requests, the continuous-batching scheduler, the paged KV cache and prefix cache, the step
executor, speculative decoding, the output stage, and the jobs that run beside generation in pieces (embeddings, prompt
logprobs)."""
