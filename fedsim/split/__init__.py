"""Split learning of a pretrained BERT-like encoder (SFPrompt, arXiv 2407.17533).

The encoder is cut in three: the client's HEAD (embeddings, soft prompts, first blocks),
the server's BODY (middle blocks, frozen) and the client's TAIL (last blocks + classifier).
One module per job:

- ``backbone``: load the frozen encoder from a local model asset; run a slice of its blocks.
- ``parts``: ``Head``, ``Body``, ``Tail`` and the split points; the client-only path.
- ``plan``: micro-batches, chunks, and the loss normalisation that makes accumulation exact.
- ``el2n``: EL2N scores and keeping the hardest fraction.
- ``wire``: tensors <-> Flower ``ArrayRecord`` (activations, optimiser state).
- ``accounting``: trainable parameters and FLOPs, against full fine-tuning.
- ``protocol``: message types, ``comm.csv`` stages, array and ``Context.state`` keys.
- ``config``: the ``[sfprompt]`` section.

Nothing here knows about Flower's messages or fedsim's loop: the method lives in
``strategies/sfprompt.py`` (server) and ``clients/sfprompt.py`` (client).
"""
