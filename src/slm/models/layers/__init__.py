"""Building blocks shared by the architectures: norms, RoPE, the chunked cross-entropy, attention kernels, KV cache."""
