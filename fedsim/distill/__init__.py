"""Server-side generative dataset distillation (Jia et al., arXiv 2312.01537).

Clients train a small surrogate; the server turns each client's update into a small labelled
synthetic set by trajectory matching (``synthesis``), optionally through a generator's latents
(``generators``, ``pretrain``), and trains the next global surrogate and a larger server-only
model on the union (``server_training``). The Flower strategy is ``strategies/distillation.py``.
"""
