"""erl_engine: the PyTorch compute engine behind the ERL wire protocol.

The TypeScript side (src/engine/client.ts) drives this package over stdio or HTTP; everything here is
tensor work: model loading, tokenisation, sampling, log-probs, losses, optimiser, checkpoints, export.
"""

ENGINE_VERSION = "0.1.0"
PROTOCOL_VERSION = 1
