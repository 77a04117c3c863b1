"""The serving loop: requests, the continuous-batching scheduler, the paged KV cache and prefix cache, the step executor, speculative decoding and the output stage."""
