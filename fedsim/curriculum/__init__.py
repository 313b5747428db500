"""Curricula in FL (Vahidian et al., ICCV 2023): data curricula in local training and a
client curriculum across rounds.

- ``pacing``: how many items (samples or clients) are eligible at step t
- ``ordering``: in which order items are released (curriculum, anti, random, vanilla)
- ``scoring``: per-sample difficulty under the global / previous local model
- ``local``: the paced index batches of one local training call
- ``schedule``: the client curriculum's pick of a round's clients

Configured by ``[curriculum]`` (``fedsim/curriculum/config.py``); the server side is
``strategies/curriculum.py``, the client side ``clients/supervised.py``.
"""

from fedsim.curriculum.ordering import order_items
from fedsim.curriculum.pacing import PACINGS, pool_fraction, pool_size

__all__ = ["PACINGS", "order_items", "pool_fraction", "pool_size"]
